# RDS MariaDB in the private subnets, reachable only from the application instances
# (security_groups.tf), encrypted at rest, never public. MariaDB is what every test and
# fault run uses (the service relies on its per-statement timeout, max_statement_time).
# TLS is required of every client (require_secure_transport); the service verifies the
# server's certificate against the region's RDS CA bundle (DATABASE_CA_PEM, secrets.tf)
# and its name (DATABASE_URL's ssl_ca).

resource "aws_db_subnet_group" "main" {
  name       = local.prefix
  subnet_ids = aws_subnet.private[*].id

  tags = { Name = local.prefix }
}

resource "aws_db_parameter_group" "main" {
  name        = "${local.prefix}-mariadb"
  family      = "mariadb${var.db_engine_version}"
  description = "MariaDB of ${local.prefix}: TLS required, triggers by the migrations"

  parameter {
    name  = "require_secure_transport"
    value = "1"
  }

  # The search's index (product_words) is kept by triggers on products, which `flask db
  # upgrade` creates as the master user: with binary logging on (backups), RDS allows
  # that only with this set (the master user has no SUPER privilege).
  parameter {
    name  = "log_bin_trust_function_creators"
    value = "1"
  }
}

resource "aws_db_instance" "main" {
  identifier     = local.prefix
  engine         = "mariadb"
  engine_version = var.db_engine_version
  instance_class = var.db_instance_class

  parameter_group_name = aws_db_parameter_group.main.name
  ca_cert_identifier   = var.db_ca_cert_identifier

  db_name  = var.db_name
  username = var.db_username
  password = random_password.db.result
  port     = 3306

  allocated_storage     = var.db_allocated_storage_gb
  max_allocated_storage = var.db_max_allocated_storage_gb
  storage_type          = "gp3"
  storage_encrypted     = true

  db_subnet_group_name   = aws_db_subnet_group.main.name
  vpc_security_group_ids = [aws_security_group.db.id]
  publicly_accessible    = false
  multi_az               = var.db_multi_az

  backup_retention_period = var.db_backup_retention_days
  backup_window           = var.db_backup_window
  maintenance_window      = var.db_maintenance_window
  copy_tags_to_snapshot   = true

  auto_minor_version_upgrade = true
  deletion_protection        = var.db_deletion_protection
  # A destroy keeps a last snapshot of the data.
  skip_final_snapshot       = false
  final_snapshot_identifier = "${local.prefix}-final"

  tags = { Name = local.prefix }
}

# Optional read replica for the statistics reads (STATS_DATABASE_URL). It inherits the
# subnet group and the master credentials from the primary; encryption is inherited too and
# stated here so that the tests can see it.
resource "aws_db_instance" "replica" {
  count = var.create_read_replica ? 1 : 0

  identifier          = "${local.prefix}-replica"
  replicate_source_db = aws_db_instance.main.identifier
  instance_class      = var.replica_instance_class != "" ? var.replica_instance_class : var.db_instance_class

  max_allocated_storage = var.db_max_allocated_storage_gb
  storage_type          = "gp3"
  storage_encrypted     = true

  parameter_group_name = aws_db_parameter_group.main.name
  ca_cert_identifier   = var.db_ca_cert_identifier

  vpc_security_group_ids = [aws_security_group.db.id]
  publicly_accessible    = false
  multi_az               = false

  # Backups stay on the primary; a replica is rebuilt from it, not restored.
  backup_retention_period = 0
  maintenance_window      = var.db_maintenance_window

  auto_minor_version_upgrade = true
  deletion_protection        = var.db_deletion_protection
  skip_final_snapshot        = true

  tags = { Name = "${local.prefix}-replica" }
}
