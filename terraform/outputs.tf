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

output "redis_endpoint" {
  description = "Primary endpoint (host:port) of the ElastiCache Redis (TLS and AUTH token required)."
  value       = "${aws_elasticache_replication_group.redis.primary_endpoint_address}:${aws_elasticache_replication_group.redis.port}"
}

output "ssm_parameter_names" {
  description = "SSM SecureString parameters holding the generated secrets: database password, SECRET_KEY, Redis AUTH token and the first admin's password (read one with aws ssm get-parameter --with-decryption)."
  value = {
    db_password      = aws_ssm_parameter.db_password.name
    secret_key       = aws_ssm_parameter.secret_key.name
    redis_auth_token = aws_ssm_parameter.redis_auth_token.name
    admin_password   = aws_ssm_parameter.admin_password.name
  }
}

output "trusted_proxies" {
  description = "CIDR blocks of the load balancer's subnets, given to the instances as TRUSTED_PROXIES."
  value       = local.trusted_proxies
}

output "log_group_name" {
  description = "CloudWatch Logs group receiving the containers' output."
  value       = aws_cloudwatch_log_group.app.name
}

output "autoscaling_group_name" {
  description = "Name of the application Auto Scaling group (for aws autoscaling start-instance-refresh and the like)."
  value       = aws_autoscaling_group.app.name
}
