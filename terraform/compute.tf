# The application instances: a launch template that runs the ECR image under Docker, an
# Auto Scaling group across the two private subnets, and target-tracking scaling.

resource "aws_cloudwatch_log_group" "app" {
  name              = "/${var.name}/${var.environment}/app"
  retention_in_days = var.log_retention_days
}

resource "aws_launch_template" "app" {
  name_prefix   = "${local.prefix}-"
  image_id      = local.ami_id
  instance_type = var.instance_type

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

  # Only names and addresses go into the user data; the secrets are read from SSM at boot.
  user_data = base64encode(templatefile("${path.module}/user_data.sh.tftpl", {
    region                     = var.region
    registry                   = split("/", aws_ecr_repository.app.repository_url)[0]
    image                      = local.image
    log_group                  = aws_cloudwatch_log_group.app.name
    db_password_parameter      = aws_ssm_parameter.db_password.name
    secret_key_parameter       = aws_ssm_parameter.secret_key.name
    redis_auth_token_parameter = aws_ssm_parameter.redis_auth_token.name
    admin_password_parameter   = aws_ssm_parameter.admin_password.name
    db_username                = var.db_username
    db_name                    = var.db_name
    db_host                    = aws_db_instance.main.address
    db_port                    = aws_db_instance.main.port
    stats_db_host              = var.create_read_replica ? aws_db_instance.replica[0].address : ""
    redis_host                 = aws_elasticache_replication_group.redis.primary_endpoint_address
    redis_port                 = aws_elasticache_replication_group.redis.port
    trusted_proxies            = local.trusted_proxies
    email_source               = var.email_source
    admin_email                = var.admin_email
    migrate_command            = var.migrate_command
  }))

  tag_specifications {
    resource_type = "instance"
    tags          = { Name = "${local.prefix}-app" }
  }

  tag_specifications {
    resource_type = "volume"
    tags          = { Name = "${local.prefix}-app" }
  }
}

resource "aws_autoscaling_group" "app" {
  name                = "${local.prefix}-app"
  vpc_zone_identifier = aws_subnet.private[*].id
  target_group_arns   = [aws_lb_target_group.app.arn]

  min_size = var.asg_min_size
  max_size = var.asg_max_size
  # desired_capacity is left to the scaling policies (it starts at min_size): setting it
  # here would reset the group to that size on every apply.

  # Replace instances that the load balancer finds unhealthy, not only those EC2 finds
  # stopped. The grace period covers boot: Docker install, image pull, migrations.
  health_check_type         = "ELB"
  health_check_grace_period = 300

  launch_template {
    id      = aws_launch_template.app.id
    version = aws_launch_template.app.latest_version
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
  # Redis.
  depends_on = [
    aws_route_table_association.private,
    aws_nat_gateway.main,
    aws_db_instance.main,
    aws_elasticache_replication_group.redis,
  ]

  tag {
    key                 = "Name"
    value               = "${local.prefix}-app"
    propagate_at_launch = true
  }
}

# Two target-tracking policies: the group scales out when either metric is above its
# target, and scales in only when both are below theirs.
resource "aws_autoscaling_policy" "cpu" {
  name                   = "${local.prefix}-cpu"
  autoscaling_group_name = aws_autoscaling_group.app.name
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
  autoscaling_group_name = aws_autoscaling_group.app.name
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
