# ElastiCache Redis in the private subnets, reachable only from the application instances
# (security_groups.tf), encrypted in transit (TLS, rediss://) and at rest, with an AUTH
# token kept in SSM (secrets.tf). The service uses it for:
#   REDIS_URL              the views stream (a 200 product read XADDs its view; the worker
#                          writes the views to MySQL and acknowledges them) and the cache
#   RATELIMIT_STORAGE_URI  failed-login counts shared by every process and instance

resource "aws_elasticache_subnet_group" "redis" {
  name        = "${local.prefix}-redis"
  description = "Private subnets of ${local.prefix}"
  subnet_ids  = aws_subnet.private[*].id
}

# noeviction: views not yet written to the database live in the stream only, so Redis must
# never drop them to make room. A full Redis refuses new writes instead; the service then
# writes views straight to the database until the worker has drained the stream.
resource "aws_elasticache_parameter_group" "redis" {
  name        = "${local.prefix}-redis"
  family      = local.redis_family
  description = "Redis of ${local.prefix}: never evict keys (the views stream)"

  parameter {
    name  = "maxmemory-policy"
    value = "noeviction"
  }
}

resource "aws_elasticache_replication_group" "redis" {
  replication_group_id = "${local.prefix}-redis"
  description          = "Views stream, cache and login limits of ${local.prefix}"

  engine               = "redis"
  engine_version       = var.redis_engine_version
  node_type            = var.redis_node_type
  port                 = local.redis_port
  parameter_group_name = aws_elasticache_parameter_group.redis.name

  subnet_group_name  = aws_elasticache_subnet_group.redis.name
  security_group_ids = [aws_security_group.redis.id]

  # A primary, and with redis_multi_az a replica in the other AZ that takes over on its own.
  num_cache_clusters         = var.redis_multi_az ? 2 : 1
  automatic_failover_enabled = var.redis_multi_az
  multi_az_enabled           = var.redis_multi_az

  at_rest_encryption_enabled = true
  transit_encryption_enabled = true
  transit_encryption_mode    = "required"
  auth_token                 = random_password.redis_auth_token.result
  auth_token_update_strategy = "ROTATE"

  snapshot_retention_limit  = var.redis_snapshot_retention_days
  snapshot_window           = var.redis_snapshot_window
  maintenance_window        = var.redis_maintenance_window
  final_snapshot_identifier = "${local.prefix}-redis-final"

  auto_minor_version_upgrade = true
  # Changes wait for the maintenance window, except a new AUTH token, which ROTATE applies
  # at once while the old one keeps working.
  apply_immediately = false

  tags = { Name = "${local.prefix}-redis" }
}
