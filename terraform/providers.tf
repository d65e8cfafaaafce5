provider "aws" {
  region = var.region

  # Every resource that supports tags gets these, so the bill and the console can be
  # filtered by project and environment.
  default_tags {
    tags = {
      Project     = var.name
      Environment = var.environment
      ManagedBy   = "terraform"
    }
  }
}
