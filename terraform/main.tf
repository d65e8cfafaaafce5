# Names and look-ups shared by the other files.

data "aws_availability_zones" "available" {
  state = "available"
}

# The latest Amazon Linux 2023 AMI, from AWS's public SSM parameter (used unless var.ami_id
# is set). insecure_value: the AMI id is public, not a secret.
data "aws_ssm_parameter" "al2023_ami" {
  name = "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64"
}

locals {
  prefix = "${var.name}-${var.environment}"

  # Two availability zones: the ALB needs subnets in at least two, and Multi-AZ RDS uses
  # the second one for its standby.
  azs = slice(data.aws_availability_zones.available.names, 0, 2)

  ami_id = var.ami_id != "" ? var.ami_id : data.aws_ssm_parameter.al2023_ami.insecure_value

  https_enabled = var.certificate_arn != ""

  # Addresses of the load balancer's nodes: the only peers whose X-Forwarded-For the
  # instances' nginx believes (TRUSTED_PROXIES).
  trusted_proxies = join(",", aws_subnet.public[*].cidr_block)

  redis_port   = 6379
  redis_family = "redis${split(".", var.redis_engine_version)[0]}"

  # SSM Parameter Store path of the application's secrets.
  ssm_prefix = "/${var.name}/${var.environment}"

  image = "${aws_ecr_repository.app.repository_url}:${var.image_tag}"
}
