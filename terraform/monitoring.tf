# Alarms, to one SNS topic (subscribe alarm_email, or anything else, to it):
#   ALB        5xx answers (the load balancer's own and the instances'), unhealthy targets
#   outbox     the oldest pending email's age; emails whose outcome is unknown
#   views      the stream's lag (views the worker has not read yet)
#   RDS        CPU, free storage
#   SES        the account's bounce and complaint rates, at half of SES's review thresholds
# The outbox and views gauges are the service's own (GET /metrics), published every
# minute by the web instances (user_data.sh.tftpl) to the namespace below; each web
# instance publishes the same values, read from the database and Redis, so the alarms
# take their maximum. The same metrics scale the worker group (compute.tf).

locals {
  metrics_namespace = "Marketplace/${local.prefix}"
  alarm_actions     = [aws_sns_topic.alarms.arn]
}

resource "aws_sns_topic" "alarms" {
  name              = "${local.prefix}-alarms"
  kms_master_key_id = "alias/aws/sns"
}

resource "aws_sns_topic_subscription" "alarm_email" {
  count = var.alarm_email != "" ? 1 : 0

  topic_arn = aws_sns_topic.alarms.arn
  protocol  = "email"
  endpoint  = var.alarm_email
}

# --- the load balancer ----------------------------------------------------------------

resource "aws_cloudwatch_metric_alarm" "alb_5xx" {
  alarm_name          = "${local.prefix}-alb-5xx"
  alarm_description   = "5xx answers (the load balancer's and the instances') over ${var.alarm_5xx_per_minute} a minute for 3 minutes"
  namespace           = "AWS/ApplicationELB"
  metric_name         = "HTTPCode_Target_5XX_Count"
  dimensions          = { LoadBalancer = aws_lb.app.arn_suffix }
  statistic           = "Sum"
  period              = 60
  evaluation_periods  = 3
  threshold           = var.alarm_5xx_per_minute
  comparison_operator = "GreaterThanThreshold"
  treat_missing_data  = "notBreaching"
  alarm_actions       = local.alarm_actions
  ok_actions          = local.alarm_actions
}

resource "aws_cloudwatch_metric_alarm" "alb_own_5xx" {
  alarm_name          = "${local.prefix}-alb-own-5xx"
  alarm_description   = "5xx answered by the load balancer itself (no healthy target, a target that did not answer) for 3 minutes"
  namespace           = "AWS/ApplicationELB"
  metric_name         = "HTTPCode_ELB_5XX_Count"
  dimensions          = { LoadBalancer = aws_lb.app.arn_suffix }
  statistic           = "Sum"
  period              = 60
  evaluation_periods  = 3
  threshold           = var.alarm_5xx_per_minute
  comparison_operator = "GreaterThanThreshold"
  treat_missing_data  = "notBreaching"
  alarm_actions       = local.alarm_actions
  ok_actions          = local.alarm_actions
}

resource "aws_cloudwatch_metric_alarm" "unhealthy_targets" {
  alarm_name          = "${local.prefix}-unhealthy-targets"
  alarm_description   = "A web instance failing the /readyz health check for 3 minutes"
  namespace           = "AWS/ApplicationELB"
  metric_name         = "UnHealthyHostCount"
  dimensions          = { LoadBalancer = aws_lb.app.arn_suffix, TargetGroup = aws_lb_target_group.app.arn_suffix }
  statistic           = "Maximum"
  period              = 60
  evaluation_periods  = 3
  threshold           = 0
  comparison_operator = "GreaterThanThreshold"
  treat_missing_data  = "notBreaching"
  alarm_actions       = local.alarm_actions
  ok_actions          = local.alarm_actions
}

# --- SES's reputation ------------------------------------------------------------------
# SES reviews an account whose bounce rate reaches 5% or complaint rate 0.1% (and may stop
# its sending above 10% and 0.5%): the alarms ring at half of the review thresholds.
# SES computes the rates over a representative window of the account's recent sending;
# the service's own 24-hour and 7-day rates are on /metrics and the Grafana dashboard.

resource "aws_cloudwatch_metric_alarm" "ses_bounce_rate" {
  alarm_name          = "${local.prefix}-ses-bounce-rate"
  alarm_description   = "SES's bounce rate of the account is over 2.5% (half of SES's 5% review threshold): look at GET /api/suppressions and the bounced emails"
  namespace           = "AWS/SES"
  metric_name         = "Reputation.BounceRate"
  statistic           = "Maximum"
  period              = 3600
  evaluation_periods  = 1
  threshold           = 0.025
  comparison_operator = "GreaterThanOrEqualToThreshold"
  treat_missing_data  = "notBreaching"
  alarm_actions       = local.alarm_actions
  ok_actions          = local.alarm_actions
}

resource "aws_cloudwatch_metric_alarm" "ses_complaint_rate" {
  alarm_name          = "${local.prefix}-ses-complaint-rate"
  alarm_description   = "SES's complaint rate of the account is over 0.05% (half of SES's 0.1% review threshold): look at the complained emails"
  namespace           = "AWS/SES"
  metric_name         = "Reputation.ComplaintRate"
  statistic           = "Maximum"
  period              = 3600
  evaluation_periods  = 1
  threshold           = 0.0005
  comparison_operator = "GreaterThanOrEqualToThreshold"
  treat_missing_data  = "notBreaching"
  alarm_actions       = local.alarm_actions
  ok_actions          = local.alarm_actions
}

# --- the service's own gauges ---------------------------------------------------------

resource "aws_cloudwatch_metric_alarm" "outbox_oldest_pending" {
  alarm_name          = "${local.prefix}-outbox-oldest-pending"
  alarm_description   = "An email has waited over ${var.alarm_outbox_age_seconds} s to be sent (SES down or refusing, or no worker)"
  namespace           = local.metrics_namespace
  metric_name         = "OutboxOldestPendingSeconds"
  statistic           = "Maximum"
  period              = 60
  evaluation_periods  = 3
  threshold           = var.alarm_outbox_age_seconds
  comparison_operator = "GreaterThanThreshold"
  # No data: no web instance publishes, which the ALB alarms report.
  treat_missing_data = "notBreaching"
  alarm_actions      = local.alarm_actions
  ok_actions         = local.alarm_actions
}

resource "aws_cloudwatch_metric_alarm" "emails_unknown" {
  alarm_name          = "${local.prefix}-emails-unknown"
  alarm_description   = "Emails whose outcome is unknown (SES may or may not have sent them): look and decide (flask notifications retry)"
  namespace           = local.metrics_namespace
  metric_name         = "EmailsUnknown"
  statistic           = "Maximum"
  period              = 60
  evaluation_periods  = 1
  threshold           = 0
  comparison_operator = "GreaterThanThreshold"
  treat_missing_data  = "notBreaching"
  alarm_actions       = local.alarm_actions
  ok_actions          = local.alarm_actions
}

resource "aws_cloudwatch_metric_alarm" "views_stream_lag" {
  alarm_name          = "${local.prefix}-views-stream-lag"
  alarm_description   = "Over ${var.alarm_views_lag} views in the stream not yet read by a worker, for 5 minutes"
  namespace           = local.metrics_namespace
  metric_name         = "ViewsStreamLag"
  statistic           = "Maximum"
  period              = 60
  evaluation_periods  = 5
  threshold           = var.alarm_views_lag
  comparison_operator = "GreaterThanThreshold"
  treat_missing_data  = "notBreaching"
  alarm_actions       = local.alarm_actions
  ok_actions          = local.alarm_actions
}

# --- the database ---------------------------------------------------------------------

resource "aws_cloudwatch_metric_alarm" "rds_cpu" {
  alarm_name          = "${local.prefix}-rds-cpu"
  alarm_description   = "The primary database over ${var.alarm_rds_cpu_percent} % CPU for 10 minutes"
  namespace           = "AWS/RDS"
  metric_name         = "CPUUtilization"
  dimensions          = { DBInstanceIdentifier = aws_db_instance.main.identifier }
  statistic           = "Average"
  period              = 300
  evaluation_periods  = 2
  threshold           = var.alarm_rds_cpu_percent
  comparison_operator = "GreaterThanThreshold"
  alarm_actions       = local.alarm_actions
  ok_actions          = local.alarm_actions
}

resource "aws_cloudwatch_metric_alarm" "rds_storage" {
  alarm_name          = "${local.prefix}-rds-free-storage"
  alarm_description   = "The primary database has under ${var.alarm_rds_free_storage_gb} GiB free (storage autoscaling stops at db_max_allocated_storage_gb)"
  namespace           = "AWS/RDS"
  metric_name         = "FreeStorageSpace"
  dimensions          = { DBInstanceIdentifier = aws_db_instance.main.identifier }
  statistic           = "Minimum"
  period              = 300
  evaluation_periods  = 1
  threshold           = var.alarm_rds_free_storage_gb * 1024 * 1024 * 1024
  comparison_operator = "LessThanThreshold"
  alarm_actions       = local.alarm_actions
  ok_actions          = local.alarm_actions
}

# --- the worker group's scaling -------------------------------------------------------
# The backlog in workers' shares: emails waiting over worker_emails_per_instance per
# worker, or stream lag over worker_views_per_instance per worker.

resource "aws_cloudwatch_metric_alarm" "worker_backlog_high" {
  alarm_name          = "${local.prefix}-worker-backlog-high"
  alarm_description   = "More backlog than the workers' share: one more worker"
  evaluation_periods  = 2
  threshold           = 1
  comparison_operator = "GreaterThanThreshold"
  treat_missing_data  = "notBreaching"
  alarm_actions       = [aws_autoscaling_policy.worker_out.arn]

  metric_query {
    id          = "share"
    expression  = "MAX([pending / (${var.worker_emails_per_instance} * IF(workers > 0, workers, 1)), lag / (${var.worker_views_per_instance} * IF(workers > 0, workers, 1))])"
    label       = "Backlog per worker, in workers' shares"
    return_data = true
  }

  metric_query {
    id = "pending"
    metric {
      namespace   = local.metrics_namespace
      metric_name = "OutboxPending"
      stat        = "Maximum"
      period      = 60
    }
  }

  metric_query {
    id = "lag"
    metric {
      namespace   = local.metrics_namespace
      metric_name = "ViewsStreamLag"
      stat        = "Maximum"
      period      = 60
    }
  }

  metric_query {
    id = "workers"
    metric {
      namespace   = "AWS/AutoScaling"
      metric_name = "GroupInServiceInstances"
      dimensions  = { AutoScalingGroupName = aws_autoscaling_group.worker.name }
      stat        = "Maximum"
      period      = 60
    }
  }
}

resource "aws_cloudwatch_metric_alarm" "worker_backlog_low" {
  alarm_name          = "${local.prefix}-worker-backlog-low"
  alarm_description   = "A quarter of the workers' share or less for 15 minutes: one fewer worker"
  evaluation_periods  = 15
  threshold           = 0.25
  comparison_operator = "LessThanThreshold"
  treat_missing_data  = "notBreaching"
  alarm_actions       = [aws_autoscaling_policy.worker_in.arn]

  metric_query {
    id          = "share"
    expression  = "MAX([pending / (${var.worker_emails_per_instance} * IF(workers > 0, workers, 1)), lag / (${var.worker_views_per_instance} * IF(workers > 0, workers, 1))])"
    label       = "Backlog per worker, in workers' shares"
    return_data = true
  }

  metric_query {
    id = "pending"
    metric {
      namespace   = local.metrics_namespace
      metric_name = "OutboxPending"
      stat        = "Maximum"
      period      = 60
    }
  }

  metric_query {
    id = "lag"
    metric {
      namespace   = local.metrics_namespace
      metric_name = "ViewsStreamLag"
      stat        = "Maximum"
      period      = 60
    }
  }

  metric_query {
    id = "workers"
    metric {
      namespace   = "AWS/AutoScaling"
      metric_name = "GroupInServiceInstances"
      dimensions  = { AutoScalingGroupName = aws_autoscaling_group.worker.name }
      stat        = "Maximum"
      period      = 60
    }
  }
}
