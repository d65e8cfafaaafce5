# The registry the instances pull the service's image from.

resource "aws_ecr_repository" "app" {
  name = var.name
  # A tag names one image for good: a deployment (var.image_tag) cannot change under the
  # instances' feet, and instances started later by scaling run the same image.
  image_tag_mutability = "IMMUTABLE"

  image_scanning_configuration {
    scan_on_push = true
  }

  encryption_configuration {
    encryption_type = "AES256"
  }
}

# Keep the last var.ecr_keep_images images (tagged or not) and expire older ones. Keep the
# number above the count of releases you may want to roll back to.
resource "aws_ecr_lifecycle_policy" "app" {
  repository = aws_ecr_repository.app.name

  policy = jsonencode({
    rules = [
      {
        rulePriority = 1
        description  = "Keep the last ${var.ecr_keep_images} images"
        selection = {
          tagStatus   = "any"
          countType   = "imageCountMoreThan"
          countNumber = var.ecr_keep_images
        }
        action = { type = "expire" }
      }
    ]
  })
}
