# Secrets: generated here, stored as SSM SecureString parameters (encrypted with the
# account's AWS managed key alias/aws/ssm), and read by the instances at boot with
# `aws ssm get-parameter --with-decryption`. They never appear in the user data.
#
# They do appear in the Terraform state (as every generated secret does): the state bucket
# is encrypted and must be readable only by the people who run Terraform.

# Letters and digits only: the password goes into DATABASE_URL unescaped, and RDS refuses
# '/', '@', '"' and spaces in master passwords.
resource "random_password" "db" {
  length  = 32
  special = false
}

# The app requires at least 32 bytes in production; 64 characters from 62 symbols give
# about 380 bits.
resource "random_password" "secret_key" {
  length  = 64
  special = false
}

resource "aws_ssm_parameter" "db_password" {
  name        = "${local.ssm_prefix}/db_password"
  description = "Password of the RDS master user ${var.db_username}"
  type        = "SecureString"
  value       = random_password.db.result
}

resource "aws_ssm_parameter" "secret_key" {
  name        = "${local.ssm_prefix}/secret_key"
  description = "SECRET_KEY of the service (signs the JWT access tokens)"
  type        = "SecureString"
  value       = random_password.secret_key.result
}

# The AUTH token of the ElastiCache Redis (elasticache.tf). ElastiCache takes 16-128
# printable characters without '@', '"' or '/'; letters and digits only also keep it
# usable unescaped in REDIS_URL (rediss://:TOKEN@host:6379/0).
resource "random_password" "redis_auth_token" {
  length  = 64
  special = false
}

resource "aws_ssm_parameter" "redis_auth_token" {
  name        = "${local.ssm_prefix}/redis_auth_token"
  description = "AUTH token of the ElastiCache Redis (REDIS_URL, RATELIMIT_STORAGE_URI)"
  type        = "SecureString"
  value       = random_password.redis_auth_token.result
}

# The first admin's password (ADMIN_PASSWORD). The migration container creates the first
# admin with it when the database has none, so the service never has to generate one and
# print it to the logs. The operator reads it once (README.md) and changes it.
resource "random_password" "admin" {
  length  = 24
  special = false
}

resource "aws_ssm_parameter" "admin_password" {
  name        = "${local.ssm_prefix}/admin_password"
  description = "Initial password of the first admin ${var.admin_email} (change it after the first login)"
  type        = "SecureString"
  value       = random_password.admin.result
}

# What the containers are given, whole: DATABASE_URL and REDIS_URL with their secrets in
# them (instances and the migration task read these, never the parts).
# ssl_ca: the server's certificate and name are verified against DATABASE_CA_PEM, which
# the image's entrypoint writes to that path.
locals {
  database_ca_path = "/run/marketplace/database-ca.pem"
  database_url     = "mysql://${var.db_username}:${random_password.db.result}@${aws_db_instance.main.address}:${aws_db_instance.main.port}/${var.db_name}?ssl_ca=${local.database_ca_path}"
  stats_database_url = (
    var.create_read_replica
    ? "mysql://${var.db_username}:${random_password.db.result}@${aws_db_instance.replica[0].address}:${aws_db_instance.main.port}/${var.db_name}?ssl_ca=${local.database_ca_path}"
    : ""
  )
  redis_url = "rediss://:${random_password.redis_auth_token.result}@${aws_elasticache_replication_group.redis.primary_endpoint_address}:${aws_elasticache_replication_group.redis.port}/0"
}

resource "aws_ssm_parameter" "database_url" {
  name        = "${local.ssm_prefix}/database_url"
  description = "DATABASE_URL of the service (TLS, the RDS CA verified)"
  type        = "SecureString"
  value       = local.database_url
}

resource "aws_ssm_parameter" "stats_database_url" {
  count = var.create_read_replica ? 1 : 0

  name        = "${local.ssm_prefix}/stats_database_url"
  description = "STATS_DATABASE_URL of the service: the read replica (TLS, the RDS CA verified)"
  type        = "SecureString"
  value       = local.stats_database_url
}

resource "aws_ssm_parameter" "redis_url" {
  name        = "${local.ssm_prefix}/redis_url"
  description = "REDIS_URL of the service (TLS and the AUTH token)"
  type        = "SecureString"
  value       = local.redis_url
}

# The region's RDS CA bundle (public certificates, not a secret), fetched once by
# terraform from AWS's trust store and handed to the containers as DATABASE_CA_PEM.
data "http" "rds_ca" {
  url = "https://truststore.pki.rds.amazonaws.com/${var.region}/${var.region}-bundle.pem"

  lifecycle {
    postcondition {
      condition     = self.status_code == 200 && strcontains(self.response_body, "BEGIN CERTIFICATE")
      error_message = "The RDS CA bundle of the region could not be fetched."
    }
  }
}

resource "aws_ssm_parameter" "database_ca" {
  name        = "${local.ssm_prefix}/database_ca"
  description = "The RDS CA bundle of ${var.region} (DATABASE_CA_PEM)"
  type        = "String"
  tier        = "Advanced" # the bundle is over the standard tier's 4 KB
  value       = data.http.rds_ca.response_body
}
