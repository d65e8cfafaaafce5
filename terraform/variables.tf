# Inputs. Only image_tag and email_source have no default: every other value is a
# production-leaning choice that can be overridden in a *.tfvars file or with -var.

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

variable "migrate_command" {
  description = "Command run in a one-off container of the image before the service starts on each instance (migrations, first admin; it takes a database lock so instances take turns). Empty: skip, when the image's own entrypoint migrates."
  type        = string
  default     = "flask deploy upgrade"
}

variable "ratelimit_storage_uri" {
  description = "Where failed logins are counted, e.g. redis://my-cache.abc123.use1.cache.amazonaws.com:6379/0 (an ElastiCache Redis reachable from the app's security group; this configuration does not create one). Empty: each uWSGI process counts on its own, so the effective limit is the configured one times processes times instances."
  type        = string
  default     = ""
}

variable "log_retention_days" {
  description = "Days CloudWatch Logs keeps the containers' output."
  type        = number
  default     = 30
}

# --- load balancer -------------------------------------------------------------------

variable "certificate_arn" {
  description = "ACM certificate ARN for the HTTPS listener. Empty: the ALB serves plain HTTP on port 80 only. Set: an HTTPS listener on 443 serves and port 80 redirects to it."
  type        = string
  default     = ""
}

variable "ssl_policy" {
  description = "TLS security policy of the HTTPS listener (used only when certificate_arn is set)."
  type        = string
  default     = "ELBSecurityPolicy-TLS13-1-2-2021-06"
}

# --- database ------------------------------------------------------------------------

variable "db_engine_version" {
  description = "RDS MySQL 8 engine version (major.minor, e.g. 8.4 or 8.0; minor upgrades are applied automatically)."
  type        = string
  default     = "8.4"

  validation {
    condition     = startswith(var.db_engine_version, "8.")
    error_message = "The service is built for MySQL 8: db_engine_version must start with 8."
  }
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
  description = "Sender address of the product-change emails (EMAIL_SOURCE). Created as an SES email identity: AWS mails it a verification link that must be clicked before SES sends from it."
  type        = string

  validation {
    condition     = can(regex("^[^@\\s'\"]+@[^@\\s'\"]+\\.[^@\\s'\"]+$", var.email_source))
    error_message = "email_source must be an email address."
  }
}
