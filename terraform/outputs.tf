output "alb_dns_name" {
  description = "DNS name of the load balancer: point the service's domain at it (CNAME or Route 53 alias)."
  value       = aws_lb.app.dns_name
}

output "app_url" {
  description = "Base URL of the service through the load balancer."
  value       = "${local.https_enabled ? "https" : "http"}://${aws_lb.app.dns_name}"
}

output "ecr_repository_url" {
  description = "URL of the ECR repository: tag and push the image as <url>:<image_tag>."
  value       = aws_ecr_repository.app.repository_url
}

output "rds_endpoint" {
  description = "Endpoint (host:port) of the primary database."
  value       = aws_db_instance.main.endpoint
}

output "rds_replica_endpoint" {
  description = "Endpoint (host:port) of the read replica, or null when create_read_replica is false."
  value       = one(aws_db_instance.replica[*].endpoint)
}

output "ssm_parameter_names" {
  description = "SSM SecureString parameters holding the database password and SECRET_KEY (read them with aws ssm get-parameter --with-decryption)."
  value = {
    db_password = aws_ssm_parameter.db_password.name
    secret_key  = aws_ssm_parameter.secret_key.name
  }
}

output "log_group_name" {
  description = "CloudWatch Logs group receiving the containers' output."
  value       = aws_cloudwatch_log_group.app.name
}

output "autoscaling_group_name" {
  description = "Name of the application Auto Scaling group (for aws autoscaling start-instance-refresh and the like)."
  value       = aws_autoscaling_group.app.name
}
