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
  description = "SSM parameters: the generated secrets (database password, SECRET_KEY, Redis AUTH token, the first admin's password) and what the containers are given (DATABASE_URL, REDIS_URL, the RDS CA bundle). Read one with aws ssm get-parameter --with-decryption."
  value = {
    db_password      = aws_ssm_parameter.db_password.name
    secret_key       = aws_ssm_parameter.secret_key.name
    redis_auth_token = aws_ssm_parameter.redis_auth_token.name
    admin_password   = aws_ssm_parameter.admin_password.name
    database_url     = aws_ssm_parameter.database_url.name
    redis_url        = aws_ssm_parameter.redis_url.name
    database_ca      = aws_ssm_parameter.database_ca.name
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
  description = "Name of the web Auto Scaling group (for aws autoscaling start-instance-refresh and the like)."
  value       = aws_autoscaling_group.web.name
}

output "worker_autoscaling_group_name" {
  description = "Name of the worker Auto Scaling group."
  value       = aws_autoscaling_group.worker.name
}

output "alarm_topic_arn" {
  description = "SNS topic every alarm notifies: subscribe to it."
  value       = aws_sns_topic.alarms.arn
}

output "alb_logs_bucket" {
  description = "S3 bucket of the load balancer's access logs (prefix alb/)."
  value       = aws_s3_bucket.alb_logs.id
}

output "ses_dkim_records" {
  description = "The DKIM CNAME records to publish in email_source's domain: SES sends from it once they resolve."
  value = [
    for token in aws_sesv2_email_identity.domain.dkim_signing_attributes[0].tokens :
    { name = "${token}._domainkey.${local.email_domain}", type = "CNAME", value = "${token}.dkim.amazonses.com" }
  ]
}

output "migration_task_definition" {
  description = "The migration task (the image's migrate role) terraform runs once per release."
  value       = aws_ecs_task_definition.migrate.arn
}
