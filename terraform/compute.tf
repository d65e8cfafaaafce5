# The instances: one image, one role per Auto Scaling group.
#   web     the API behind the load balancer (nginx -> uWSGI), scaled on CPU and requests
#   worker  `flask worker`: the emails and the views stream, scaled on their backlog
# Each group's launch template runs the ECR image under Docker in its role
# (user_data.sh.tftpl). The migrations run once per release before either group rolls
# onto a new image (release.tf).

resource "aws_cloudwatch_log_group" "app" {
  name              = "/${var.name}/${var.environment}/app"
  retention_in_days = var.log_retention_days
}

locals {
  # What both roles' user data is given: names and addresses only (secrets.tf).
  user_data_values = {
    region                       = var.region
    registry                     = split("/", aws_ecr_repository.app.repository_url)[0]
    image                        = local.image
    log_group                    = aws_cloudwatch_log_group.app.name
    database_url_parameter       = aws_ssm_parameter.database_url.name
    stats_database_url_parameter = var.create_read_replica ? aws_ssm_parameter.stats_database_url[0].name : ""
    database_ca_parameter        = aws_ssm_parameter.database_ca.name
    secret_key_parameter         = aws_ssm_parameter.secret_key.name
    redis_url_parameter          = aws_ssm_parameter.redis_url.name
    trusted_proxies              = local.trusted_proxies
    email_source                 = var.email_source
    metrics_namespace            = local.metrics_namespace
    ses_events_queue_url         = aws_sqs_queue.ses_events.url
  }

  roles = {
    web    = { instance_type = var.instance_type }
    worker = { instance_type = var.worker_instance_type }
  }
}

resource "aws_launch_template" "app" {
  for_each = local.roles

  name_prefix   = "${local.prefix}-${each.key}-"
  image_id      = local.ami_id
  instance_type = each.value.instance_type

  iam_instance_profile {
    arn = aws_iam_instance_profile.app.arn
  }

  vpc_security_group_ids = [aws_security_group.app.id]

  # IMDSv2 only. Hop limit 2: the container (Docker bridge network, one hop further) must
  # reach the metadata service for the role's credentials (SES).
  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required"
    http_put_response_hop_limit = 2
  }

  block_device_mappings {
    device_name = "/dev/xvda"

    ebs {
      volume_size           = var.root_volume_size_gb
      volume_type           = "gp3"
      encrypted             = true
      delete_on_termination = true
    }
  }

  user_data = base64encode(templatefile("${path.module}/user_data.sh.tftpl", merge(local.user_data_values, { role = each.key })))

  tag_specifications {
    resource_type = "instance"
    tags          = { Name = "${local.prefix}-${each.key}", Role = each.key }
  }

  tag_specifications {
    resource_type = "volume"
    tags          = { Name = "${local.prefix}-${each.key}" }
  }
}

moved {
  from = aws_launch_template.app
  to   = aws_launch_template.app["web"]
}

resource "aws_autoscaling_group" "web" {
  name                = "${local.prefix}-app"
  vpc_zone_identifier = aws_subnet.private[*].id
  target_group_arns   = [aws_lb_target_group.app.arn]

  min_size = var.asg_min_size
  max_size = var.asg_max_size
  # desired_capacity is left to the scaling policies (it starts at min_size): setting it
  # here would reset the group to that size on every apply.

  # Replace instances that the load balancer finds unhealthy, not only those EC2 finds
  # stopped. The grace period covers boot: Docker install, image pull, start.
  health_check_type         = "ELB"
  health_check_grace_period = 300

  launch_template {
    id      = aws_launch_template.app["web"].id
    version = aws_launch_template.app["web"].latest_version
  }

  # A new launch template version (a new image_tag, AMI or setting) replaces the instances
  # a few at a time, keeping at least half of them in service.
  instance_refresh {
    strategy = "Rolling"
    preferences {
      min_healthy_percentage = 50
      instance_warmup        = 300
    }
  }

  # The instances' first boot needs the NAT gateways (packages, ECR, SSM), the database and
  # Redis; a new image's first, its migrations (expand, then contract: docs/deployment.md).
  depends_on = [
    aws_route_table_association.private,
    aws_nat_gateway.main,
    aws_db_instance.main,
    aws_elasticache_replication_group.redis,
    terraform_data.migrate,
  ]

  tag {
    key                 = "Name"
    value               = "${local.prefix}-web"
    propagate_at_launch = true
  }
}

moved {
  from = aws_autoscaling_group.app
  to   = aws_autoscaling_group.web
}

resource "aws_autoscaling_group" "worker" {
  name                = "${local.prefix}-worker"
  vpc_zone_identifier = aws_subnet.private[*].id

  min_size = var.worker_min_size
  max_size = var.worker_max_size
  # The scaling alarms divide the backlog by the workers in service.
  enabled_metrics     = ["GroupInServiceInstances"]
  metrics_granularity = "1Minute"

  # No load balancer: EC2's own health checks. A worker container that exits is started
  # again by Docker (--restart unless-stopped).
  health_check_type         = "EC2"
  health_check_grace_period = 300
  # A stopping worker finishes its email and batch of views (docker stop, 30 s) and gives
  # back what it had claimed: scale-in loses nothing.

  launch_template {
    id      = aws_launch_template.app["worker"].id
    version = aws_launch_template.app["worker"].latest_version
  }

  instance_refresh {
    strategy = "Rolling"
    preferences {
      min_healthy_percentage = 50
      instance_warmup        = 180
    }
  }

  depends_on = [
    aws_route_table_association.private,
    aws_nat_gateway.main,
    aws_db_instance.main,
    aws_elasticache_replication_group.redis,
    terraform_data.migrate,
  ]

  tag {
    key                 = "Name"
    value               = "${local.prefix}-worker"
    propagate_at_launch = true
  }
}

# The web group: two target-tracking policies; it scales out when either metric is above
# its target, and scales in only when both are below theirs.
resource "aws_autoscaling_policy" "cpu" {
  name                   = "${local.prefix}-cpu"
  autoscaling_group_name = aws_autoscaling_group.web.name
  policy_type            = "TargetTrackingScaling"

  target_tracking_configuration {
    predefined_metric_specification {
      predefined_metric_type = "ASGAverageCPUUtilization"
    }
    target_value = var.cpu_target_percent
  }
}

resource "aws_autoscaling_policy" "requests" {
  name                   = "${local.prefix}-requests"
  autoscaling_group_name = aws_autoscaling_group.web.name
  policy_type            = "TargetTrackingScaling"

  target_tracking_configuration {
    predefined_metric_specification {
      predefined_metric_type = "ALBRequestCountPerTarget"
      resource_label         = "${aws_lb.app.arn_suffix}/${aws_lb_target_group.app.arn_suffix}"
    }
    target_value = var.requests_per_target
  }

  # The resource label names the listener's target group, which must be attached first.
  depends_on = [aws_lb_listener.http]
}

# The worker group: one more worker while the backlog (emails waiting, or views not yet
# read from the stream) is over a worker's share, one fewer once both are well under
# (monitoring.tf's worker_backlog_high and worker_backlog_low alarms).
resource "aws_autoscaling_policy" "worker_out" {
  name                   = "${local.prefix}-worker-out"
  autoscaling_group_name = aws_autoscaling_group.worker.name
  policy_type            = "StepScaling"
  adjustment_type        = "ChangeInCapacity"

  step_adjustment {
    metric_interval_lower_bound = 0
    scaling_adjustment          = 1
  }
}

resource "aws_autoscaling_policy" "worker_in" {
  name                   = "${local.prefix}-worker-in"
  autoscaling_group_name = aws_autoscaling_group.worker.name
  policy_type            = "StepScaling"
  adjustment_type        = "ChangeInCapacity"

  step_adjustment {
    metric_interval_upper_bound = 0
    scaling_adjustment          = -1
  }
}
