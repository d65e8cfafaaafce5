# Inputs. Only image_tag, email_source and admin_email have no default: every other value
# is a production-leaning choice that can be overridden in a *.tfvars file or with -var.

variable "region" {
  description = "AWS region for every resource (the S3 backend's region is set separately in terraform.tf)."
  type        = string
  default     = "us-east-1"
}

variable "name" {
  description = "Name prefix for resources, the ECR repository name and the first segment of the SSM parameter path."
  type        = string
  default     = "marketplace"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,15}$", var.name))
    error_message = "name must be 2-16 lowercase letters, digits or dashes, starting with a letter (load balancer names are limited to 32 characters)."
  }
}

variable "environment" {
  description = "Environment label: used in resource names, tags and the SSM parameter path (/<name>/<environment>/...)."
  type        = string
  default     = "production"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{0,11}$", var.environment))
    error_message = "environment must be 1-12 lowercase letters, digits or dashes, starting with a letter."
  }
}

# --- network -------------------------------------------------------------------------

variable "vpc_cidr" {
  description = "CIDR block of the VPC; the public and private /24 subnets of the two AZs are carved from it."
  type        = string
  default     = "10.20.0.0/16"
}

variable "single_nat_gateway" {
  description = "true: one NAT gateway shared by both private subnets (cheaper, but the private subnets lose outbound internet if its AZ fails). false: one NAT gateway per AZ."
  type        = bool
  default     = false
}

# --- container image and instances -------------------------------------------------------

variable "image_tag" {
  description = "Tag of the image in the ECR repository that the instances run (for example the git commit SHA). Changing it rolls the Auto Scaling group onto the new image."
  type        = string

  validation {
    condition     = can(regex("^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$", var.image_tag))
    error_message = "image_tag must be a Docker tag: letters, digits, '_', '.' and '-', at most 128."
  }
}

variable "ecr_keep_images" {
  description = "The ECR lifecycle policy keeps this many most recent images and expires older ones."
  type        = number
  default     = 30

  validation {
    condition     = var.ecr_keep_images >= 1
    error_message = "ecr_keep_images must be at least 1."
  }
}

variable "instance_type" {
  description = "EC2 instance type of the application instances."
  type        = string
  default     = "t3.small"
}

variable "ami_id" {
  description = "AMI for the application instances. Empty: the latest Amazon Linux 2023 (x86_64) from the public SSM parameter, which the user data script is written for."
  type        = string
  default     = ""
}

variable "root_volume_size_gb" {
  description = "Size in GiB of each instance's encrypted gp3 root volume (holds the Docker images)."
  type        = number
  default     = 20
}

variable "asg_min_size" {
  description = "Fewest application instances; keep at least 2 so that both AZs serve."
  type        = number
  default     = 2
}

variable "asg_max_size" {
  description = "Most application instances the target-tracking policies may scale out to."
  type        = number
  default     = 6
}

variable "cpu_target_percent" {
  description = "Target-tracking goal for the group's average CPU utilisation, in percent."
  type        = number
  default     = 60
}

variable "requests_per_target" {
  description = "Target-tracking goal for ALBRequestCountPerTarget: requests per instance per minute."
  type        = number
  default     = 1000
}

variable "worker_instance_type" {
  description = "EC2 instance type of the worker instances (the worker role: emails, the views stream)."
  type        = string
  default     = "t3.small"
}

variable "worker_min_size" {
  description = "Fewest worker instances; at least 1, or no email is sent and no view written."
  type        = number
  default     = 1

  validation {
    condition     = var.worker_min_size >= 1
    error_message = "worker_min_size must be at least 1: without a worker no email is sent."
  }
}

variable "worker_max_size" {
  description = "Most worker instances the backlog alarms may scale out to."
  type        = number
  default     = 4
}

variable "worker_emails_per_instance" {
  description = "A worker's share of the email backlog (emails pending): past it per worker, the group gets one more."
  type        = number
  default     = 200
}

variable "worker_views_per_instance" {
  description = "A worker's share of the views stream's lag (views not yet read): past it per worker, the group gets one more."
  type        = number
  default     = 20000
}

variable "log_retention_days" {
  description = "Days CloudWatch Logs keeps the containers' output."
  type        = number
  default     = 30
}

# --- load balancer -------------------------------------------------------------------

variable "certificate_arn" {
  description = "ACM certificate ARN for the HTTPS listener on 443; port 80 then only redirects to it (301). Required unless allow_plain_http is true."
  type        = string
  default     = ""

  validation {
    condition     = var.certificate_arn != "" || var.allow_plain_http
    error_message = "certificate_arn must be set: without a certificate the load balancer would carry passwords and tokens over plain HTTP. Set certificate_arn to an ACM certificate ARN, or set allow_plain_http = true to accept plain HTTP on purpose (a test stack without a domain)."
  }

  validation {
    condition     = var.certificate_arn == "" || can(regex("^arn:aws[a-z-]*:acm:[a-z0-9-]+:[0-9]{12}:certificate/.+$", var.certificate_arn))
    error_message = "certificate_arn must be an ACM certificate ARN (arn:aws:acm:<region>:<account>:certificate/<id>)."
  }
}

variable "allow_plain_http" {
  description = "Serve plain HTTP on port 80 when certificate_arn is empty. Only for a stack without a domain (a test): passwords and tokens then cross the internet unencrypted. Ignored when certificate_arn is set."
  type        = bool
  default     = false
}

variable "ssl_policy" {
  description = "TLS security policy of the HTTPS listener: TLS 1.3 and TLS 1.2 with forward-secret AEAD ciphers only, and hybrid post-quantum key exchange for clients that offer it."
  type        = string
  default     = "ELBSecurityPolicy-TLS13-1-2-Res-PQ-2025-09"

  validation {
    condition     = can(regex("^ELBSecurityPolicy-TLS13-1-[23]-", var.ssl_policy))
    error_message = "ssl_policy must be one of the ELBSecurityPolicy-TLS13-1-2-* or ELBSecurityPolicy-TLS13-1-3-* policies: older policies accept TLS 1.0 and 1.1."
  }
}

# --- Redis (ElastiCache) -------------------------------------------------------------

variable "redis_engine_version" {
  description = "ElastiCache Redis OSS engine version (major.minor). Its parameter group family follows the major version."
  type        = string
  default     = "7.1"

  validation {
    condition     = can(regex("^7\\.[0-9]+$", var.redis_engine_version))
    error_message = "redis_engine_version must be a Redis 7 version such as 7.1 (streams with XAUTOCLAIM need Redis 6.2 or later; the parameter group is written for the redis7 family)."
  }
}

variable "redis_node_type" {
  description = "ElastiCache node type. The views stream holds only views not yet written to the database, so memory needs are small; size for the burst you expect while the database is down."
  type        = string
  default     = "cache.t4g.small"
}

variable "redis_multi_az" {
  description = "Run a replica in the other AZ with automatic failover (Multi-AZ). false: a single node; if it fails, views not yet written to the database are lost and the app writes views directly until a new node is up."
  type        = bool
  default     = true
}

variable "redis_snapshot_retention_days" {
  description = "Days of daily ElastiCache snapshots kept (1-35)."
  type        = number
  default     = 7

  validation {
    condition     = var.redis_snapshot_retention_days >= 1 && var.redis_snapshot_retention_days <= 35
    error_message = "redis_snapshot_retention_days must be between 1 and 35."
  }
}

variable "redis_snapshot_window" {
  description = "Daily UTC window of the ElastiCache snapshot (must not overlap redis_maintenance_window)."
  type        = string
  default     = "02:00-03:00"
}

variable "redis_maintenance_window" {
  description = "Weekly UTC maintenance window of ElastiCache (after the database's, so the two are not patched at the same time)."
  type        = string
  default     = "sun:05:30-sun:06:30"
}

# --- database ------------------------------------------------------------------------

variable "db_engine_version" {
  description = "RDS MariaDB engine version (major.minor; minor upgrades are applied automatically). 10.11, the long-term release Debian bookworm ships, is what the tests run."
  type        = string
  default     = "10.11"

  validation {
    condition     = contains(["10.6", "10.11", "11.4"], var.db_engine_version)
    error_message = "db_engine_version must be a MariaDB long-term release RDS offers: 10.6, 10.11 or 11.4."
  }
}

variable "db_ca_cert_identifier" {
  description = "The RDS certificate authority that signs the database's TLS certificate; the service verifies it against the region's RDS CA bundle."
  type        = string
  default     = "rds-ca-rsa2048-g1"
}

variable "db_instance_class" {
  description = "Instance class of the primary database."
  type        = string
  default     = "db.t4g.medium"
}

variable "db_allocated_storage_gb" {
  description = "Initial storage of the database in GiB (gp3, encrypted)."
  type        = number
  default     = 20
}

variable "db_max_allocated_storage_gb" {
  description = "Storage autoscaling ceiling in GiB (0 disables storage autoscaling)."
  type        = number
  default     = 100
}

variable "db_name" {
  description = "Name of the schema the application uses."
  type        = string
  default     = "marketplace"
}

variable "db_username" {
  description = "Master user name of the database (its password is generated and kept in SSM)."
  type        = string
  default     = "marketplace"
}

variable "db_multi_az" {
  description = "Run the primary database Multi-AZ (a synchronous standby in the other AZ)."
  type        = bool
  default     = true
}

variable "db_deletion_protection" {
  description = "Protect the database instances from deletion (set false, apply, then destroy to tear down)."
  type        = bool
  default     = true
}

variable "db_backup_retention_days" {
  description = "Days of automated backups (point-in-time recovery) kept for the primary; at least 1, which a read replica also requires."
  type        = number
  default     = 7

  validation {
    condition     = var.db_backup_retention_days >= 1 && var.db_backup_retention_days <= 35
    error_message = "db_backup_retention_days must be between 1 and 35."
  }
}

variable "db_backup_window" {
  description = "Daily UTC window for automated backups (must not overlap the maintenance window)."
  type        = string
  default     = "03:00-04:00"
}

variable "db_maintenance_window" {
  description = "Weekly UTC maintenance window."
  type        = string
  default     = "sun:04:30-sun:05:30"
}

variable "create_read_replica" {
  description = "Create a read replica of the database; its endpoint is given to the service as STATS_DATABASE_URL (the statistics reads)."
  type        = bool
  default     = false
}

variable "replica_instance_class" {
  description = "Instance class of the read replica. Empty: the primary's class."
  type        = string
  default     = ""
}

# --- email ---------------------------------------------------------------------------

variable "email_source" {
  description = "Sender address of the product-change emails (EMAIL_SOURCE). Its domain becomes an SES domain identity with Easy DKIM: publish the records of output ses_dkim_records before SES sends from it."
  type        = string

  validation {
    condition     = can(regex("^[^@\\s'\"]+@[^@\\s'\"]+\\.[^@\\s'\"]+$", var.email_source))
    error_message = "email_source must be an email address."
  }
}

variable "admin_email" {
  description = "Email of the first admin account (ADMIN_EMAIL), created by the release's migration task (release.tf) when the database has no admin. Its password is generated and kept in SSM (output ssm_parameter_names.admin_password)."
  type        = string

  validation {
    condition     = can(regex("^[^@\\s'\"]+@[^@\\s'\"]+\\.[^@\\s'\"]+$", var.admin_email))
    error_message = "admin_email must be an email address."
  }
}

# --- alarms and logs -------------------------------------------------------------------

variable "alarm_email" {
  description = "An address subscribed to the alarms' SNS topic (AWS mails it a confirmation link). Empty: subscribe to the topic (output alarm_topic_arn) yourself."
  type        = string
  default     = ""
}

variable "alarm_5xx_per_minute" {
  description = "5xx answers a minute, for 3 minutes, that raise an alarm (the instances' and, separately, the load balancer's own)."
  type        = number
  default     = 5
}

variable "alarm_outbox_age_seconds" {
  description = "Age in seconds of the oldest pending email that raises an alarm."
  type        = number
  default     = 600
}

variable "ses_events_max_receives" {
  description = "Receives of an SES events message the worker could not apply before SQS moves it to the dead-letter queue."
  type        = number
  default     = 5

  validation {
    condition     = var.ses_events_max_receives >= 2 && var.ses_events_max_receives <= 1000
    error_message = "ses_events_max_receives must be 2 to 1000 (SQS's range; 1 would lose a message to one failed try)."
  }
}

variable "alarm_views_lag" {
  description = "Views in the stream not yet read by a worker, for 5 minutes, that raise an alarm."
  type        = number
  default     = 100000
}

variable "alarm_rds_cpu_percent" {
  description = "The primary database's average CPU, for 10 minutes, that raises an alarm."
  type        = number
  default     = 80
}

variable "alarm_rds_free_storage_gb" {
  description = "Free storage of the primary database, in GiB, under which an alarm is raised."
  type        = number
  default     = 5
}

variable "alb_log_retention_days" {
  description = "Days the load balancer's access logs are kept in their S3 bucket."
  type        = number
  default     = 90
}
