# Public Application Load Balancer in front of the Auto Scaling group.
# With var.certificate_arn (required unless var.allow_plain_http): HTTPS on 443 forwards
# to the instances, and port 80 only answers 301 to the same URL on https://.
# Without it (allow_plain_http = true, a test stack): HTTP on port 80 forwards.

resource "aws_lb" "app" {
  name               = local.prefix
  load_balancer_type = "application"
  internal           = false
  security_groups    = [aws_security_group.alb.id]
  subnets            = aws_subnet.public[*].id

  drop_invalid_header_fields = true
  idle_timeout               = 60
}

resource "aws_lb_target_group" "app" {
  name        = local.prefix
  port        = 80
  protocol    = "HTTP"
  target_type = "instance"
  vpc_id      = aws_vpc.main.id

  # Let in-flight requests finish when an instance leaves (scale-in, instance refresh).
  deregistration_delay = 30

  # /readyz answers 200 only when the instance can reach the database, so an instance is
  # put in service only once it can serve, and taken out (and replaced by the Auto Scaling
  # group, whose health check type is ELB) when it cannot.
  health_check {
    path                = "/readyz"
    protocol            = "HTTP"
    matcher             = "200"
    interval            = 15
    timeout             = 5
    healthy_threshold   = 2
    unhealthy_threshold = 3
  }
}

resource "aws_lb_listener" "http" {
  load_balancer_arn = aws_lb.app.arn
  port              = 80
  protocol          = "HTTP"

  default_action {
    type             = local.https_enabled ? "redirect" : "forward"
    target_group_arn = local.https_enabled ? null : aws_lb_target_group.app.arn

    dynamic "redirect" {
      for_each = local.https_enabled ? [1] : []
      content {
        protocol    = "HTTPS"
        port        = "443"
        status_code = "HTTP_301"
      }
    }
  }
}

resource "aws_lb_listener" "https" {
  count = local.https_enabled ? 1 : 0

  load_balancer_arn = aws_lb.app.arn
  port              = 443
  protocol          = "HTTPS"
  ssl_policy        = var.ssl_policy
  certificate_arn   = var.certificate_arn

  default_action {
    type             = "forward"
    target_group_arn = aws_lb_target_group.app.arn
  }
}
