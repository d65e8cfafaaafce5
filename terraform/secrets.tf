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
