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
