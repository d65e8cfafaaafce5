# Terraform itself, the providers it may use, and where the state lives.
#
# The state bucket is named here because a backend block cannot read variables. It is not
# created by this configuration (the state cannot live in a bucket it is about to create):
# README.md shows the one-off commands that create it, versioned, encrypted and private.
terraform {
  # use_lockfile (S3-native state locking, no DynamoDB table) needs Terraform >= 1.10.
  required_version = ">= 1.10"

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = "~> 6.0"
    }
    random = {
      source  = "hashicorp/random"
      version = "~> 3.6"
    }
    http = {
      source  = "hashicorp/http"
      version = "~> 3.4"
    }
  }

  backend "s3" {
    bucket       = "marketplace-terraform-state"
    key          = "marketplace/production/terraform.tfstate"
    region       = "us-east-1"
    encrypt      = true
    use_lockfile = true
  }
}
