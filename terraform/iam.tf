# The instances' identity (web and worker alike). No static AWS keys exist anywhere: the
# instances (and their containers, through IMDSv2) get short-lived credentials for this
# role. (The migration task has its own, release.tf.)
#
# The role may do exactly this, each on its own resource only:
#   ses:SendEmail, ses:SendRawEmail            the sender's domain identity and its
#                                              configuration set
#   ses:GetSendQuota                           "*" (no resource-level scope): the pace
#   sqs:ReceiveMessage, sqs:DeleteMessage,
#   sqs:ChangeMessageVisibility,
#   sqs:GetQueueAttributes                     SES's events queue (the worker reads it)
#   ecr:GetAuthorizationToken                  "*" (the action has no resource-level scope)
#   ecr:BatchCheckLayerAvailability,
#   ecr:GetDownloadUrlForLayer, ecr:BatchGetImage   the service's repository (pull only)
#   ssm:GetParameter, ssm:GetParameters        the parameters the boot script reads
#   logs:CreateLogStream, logs:PutLogEvents    the service's log group (Docker's awslogs driver)
#   cloudwatch:PutMetricData                   "*" (no resource-level scope), only into the
#                                              service's namespace (a condition)
# kms:Decrypt is not granted: the parameters use the AWS managed key alias/aws/ssm, whose
# key policy lets the account's principals decrypt through SSM. (A customer managed key
# would need kms:Decrypt on that key, with a kms:ViaService condition.)
# ElastiCache needs no IAM grant: the instances reach it over the network (security group)
# and authenticate with the AUTH token.
# tests/test_terraform.py holds the same list and fails when the two differ.

data "aws_iam_policy_document" "app_assume_role" {
  statement {
    sid     = "EC2AssumesRole"
    effect  = "Allow"
    actions = ["sts:AssumeRole"]

    principals {
      type        = "Service"
      identifiers = ["ec2.amazonaws.com"]
    }
  }
}

data "aws_iam_policy_document" "app" {
  statement {
    sid     = "SendEmailAsTheSender"
    effect  = "Allow"
    actions = ["ses:SendEmail", "ses:SendRawEmail"]
    resources = [
      aws_sesv2_email_identity.domain.arn,
      aws_sesv2_configuration_set.email.arn,
    ]
  }

  statement {
    sid       = "ReadTheSendQuota"
    effect    = "Allow"
    actions   = ["ses:GetSendQuota"]
    resources = ["*"]
  }

  statement {
    sid    = "ReadSesEvents"
    effect = "Allow"
    actions = [
      "sqs:ReceiveMessage",
      "sqs:DeleteMessage",
      "sqs:ChangeMessageVisibility",
      "sqs:GetQueueAttributes",
    ]
    resources = [aws_sqs_queue.ses_events.arn]
  }

  statement {
    sid       = "EcrLogin"
    effect    = "Allow"
    actions   = ["ecr:GetAuthorizationToken"]
    resources = ["*"]
  }

  statement {
    sid    = "EcrPullTheServiceImage"
    effect = "Allow"
    actions = [
      "ecr:BatchCheckLayerAvailability",
      "ecr:GetDownloadUrlForLayer",
      "ecr:BatchGetImage",
    ]
    resources = [aws_ecr_repository.app.arn]
  }

  statement {
    sid     = "ReadTheServiceSecrets"
    effect  = "Allow"
    actions = ["ssm:GetParameter", "ssm:GetParameters"]
    resources = concat(
      [
        aws_ssm_parameter.database_url.arn,
        aws_ssm_parameter.database_ca.arn,
        aws_ssm_parameter.secret_key.arn,
        aws_ssm_parameter.redis_url.arn,
      ],
      aws_ssm_parameter.stats_database_url[*].arn,
    )
  }

  statement {
    sid       = "WriteTheServiceLogs"
    effect    = "Allow"
    actions   = ["logs:CreateLogStream", "logs:PutLogEvents"]
    resources = ["${aws_cloudwatch_log_group.app.arn}:*"]
  }

  statement {
    sid       = "PublishTheServiceMetrics"
    effect    = "Allow"
    actions   = ["cloudwatch:PutMetricData"]
    resources = ["*"]

    condition {
      test     = "StringEquals"
      variable = "cloudwatch:namespace"
      values   = [local.metrics_namespace]
    }
  }
}

resource "aws_iam_role" "app" {
  name               = "${local.prefix}-app"
  description        = "Application instances of ${local.prefix}"
  assume_role_policy = data.aws_iam_policy_document.app_assume_role.json
}

resource "aws_iam_role_policy" "app" {
  name   = "${local.prefix}-app"
  role   = aws_iam_role.app.id
  policy = data.aws_iam_policy_document.app.json
}

resource "aws_iam_instance_profile" "app" {
  name = "${local.prefix}-app"
  role = aws_iam_role.app.name
}
