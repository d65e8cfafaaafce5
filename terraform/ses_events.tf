# What SES says of each email after taking it: the configuration set (ses.tf) publishes
# its Bounce, Complaint, Delivery, Reject and DeliveryDelay events to an SNS topic, which
# delivers them to an SQS queue; the worker reads the queue (SES_EVENTS_QUEUE_URL, given
# to the worker role only: user_data.sh.tftpl) and deletes a message once its effect is
# committed (docs/emails.md).
#
# A message the worker cannot read (malformed) is left alone: after
# ses_events_max_receives receives SQS moves it to the dead-letter queue, kept 14 days to
# read. Only the topic may send to the queue; only SES (this account's configuration
# set) may publish to the topic.

locals {
  ses_event_types = ["BOUNCE", "COMPLAINT", "DELIVERY", "REJECT", "DELIVERY_DELAY"]
}

resource "aws_sns_topic" "ses_events" {
  # Not encrypted with a KMS key: the AWS managed key (alias/aws/sns) cannot be granted to
  # SES, and the events hold addresses and message ids only. The queues are encrypted.
  name = "${local.prefix}-ses-events"
}

data "aws_iam_policy_document" "ses_events_topic" {
  statement {
    sid       = "SesPublishesTheConfigurationSetsEvents"
    effect    = "Allow"
    actions   = ["sns:Publish"]
    resources = [aws_sns_topic.ses_events.arn]

    principals {
      type        = "Service"
      identifiers = ["ses.amazonaws.com"]
    }

    condition {
      test     = "StringEquals"
      variable = "AWS:SourceAccount"
      values   = [data.aws_caller_identity.current.account_id]
    }
  }
}

resource "aws_sns_topic_policy" "ses_events" {
  arn    = aws_sns_topic.ses_events.arn
  policy = data.aws_iam_policy_document.ses_events_topic.json
}

resource "aws_sesv2_configuration_set_event_destination" "ses_events" {
  configuration_set_name = aws_sesv2_configuration_set.email.configuration_set_name
  event_destination_name = "${local.prefix}-ses-events"

  event_destination {
    enabled              = true
    matching_event_types = local.ses_event_types

    sns_destination {
      topic_arn = aws_sns_topic.ses_events.arn
    }
  }

  depends_on = [aws_sns_topic_policy.ses_events]
}

resource "aws_sqs_queue" "ses_events_dead" {
  name                      = "${local.prefix}-ses-events-dead"
  message_retention_seconds = 1209600 # 14 days, SQS's longest
  sqs_managed_sse_enabled   = true
}

resource "aws_sqs_queue" "ses_events" {
  name = "${local.prefix}-ses-events"
  # Longer than applying one receive's messages; a message not deleted comes back after it.
  visibility_timeout_seconds = 60
  receive_wait_time_seconds  = 20
  # Events wait this long for a worker (a long outage, a stopped worker group).
  message_retention_seconds = 1209600
  sqs_managed_sse_enabled   = true

  redrive_policy = jsonencode({
    deadLetterTargetArn = aws_sqs_queue.ses_events_dead.arn
    maxReceiveCount     = var.ses_events_max_receives
  })
}

resource "aws_sqs_queue_redrive_allow_policy" "ses_events_dead" {
  queue_url = aws_sqs_queue.ses_events_dead.id

  redrive_allow_policy = jsonencode({
    redrivePermission = "byQueue"
    sourceQueueArns   = [aws_sqs_queue.ses_events.arn]
  })
}

data "aws_iam_policy_document" "ses_events_queue" {
  statement {
    sid       = "OnlyTheTopicSends"
    effect    = "Allow"
    actions   = ["sqs:SendMessage"]
    resources = [aws_sqs_queue.ses_events.arn]

    principals {
      type        = "Service"
      identifiers = ["sns.amazonaws.com"]
    }

    condition {
      test     = "ArnEquals"
      variable = "aws:SourceArn"
      values   = [aws_sns_topic.ses_events.arn]
    }
  }
}

resource "aws_sqs_queue_policy" "ses_events" {
  queue_url = aws_sqs_queue.ses_events.id
  policy    = data.aws_iam_policy_document.ses_events_queue.json
}

resource "aws_sns_topic_subscription" "ses_events" {
  topic_arn = aws_sns_topic.ses_events.arn
  protocol  = "sqs"
  endpoint  = aws_sqs_queue.ses_events.arn
  # SNS's envelope around each event (the worker reads raw delivery too).
  raw_message_delivery = false

  depends_on = [aws_sqs_queue_policy.ses_events]
}
