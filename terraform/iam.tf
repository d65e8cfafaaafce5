# The application instances' identity. No static AWS keys exist anywhere: the instances
# (and the container, through IMDSv2) get short-lived credentials for this role.
#
# The role may do exactly this, each on its own resource only:
#   ses:SendEmail, ses:SendRawEmail            the sender identity
#   ecr:GetAuthorizationToken                  "*" (the action has no resource-level scope)
#   ecr:BatchCheckLayerAvailability,
#   ecr:GetDownloadUrlForLayer, ecr:BatchGetImage   the service's repository (pull only)
#   ssm:GetParameter, ssm:GetParameters        the service's four SecureString parameters
#   logs:CreateLogStream, logs:PutLogEvents    the service's log group (Docker's awslogs driver)
# kms:Decrypt is not granted: the parameters use the AWS managed key alias/aws/ssm, whose
# key policy lets the account's principals decrypt through SSM. (A customer managed key
# would need kms:Decrypt on that key, with a kms:ViaService condition.)
# ElastiCache needs no IAM grant: the instances reach it over the network (security group)
# and authenticate with the AUTH token.
# tests/test_terraform.py holds the same list and fails when the two differ.

data "aws_iam_policy_document" "app_assume_role" {
  statement {
    sid     = "EC2AssumesRole"
    effect  = "Allow"
    actions = ["sts:AssumeRole"]

    principals {
      type        = "Service"
      identifiers = ["ec2.amazonaws.com"]
    }
  }
}

data "aws_iam_policy_document" "app" {
  statement {
    sid       = "SendEmailAsTheSender"
    effect    = "Allow"
    actions   = ["ses:SendEmail", "ses:SendRawEmail"]
    resources = [aws_ses_email_identity.sender.arn]
  }

  statement {
    sid       = "EcrLogin"
    effect    = "Allow"
    actions   = ["ecr:GetAuthorizationToken"]
    resources = ["*"]
  }

  statement {
    sid    = "EcrPullTheServiceImage"
    effect = "Allow"
    actions = [
      "ecr:BatchCheckLayerAvailability",
      "ecr:GetDownloadUrlForLayer",
      "ecr:BatchGetImage",
    ]
    resources = [aws_ecr_repository.app.arn]
  }

  statement {
    sid     = "ReadTheServiceSecrets"
    effect  = "Allow"
    actions = ["ssm:GetParameter", "ssm:GetParameters"]
    resources = [
      aws_ssm_parameter.db_password.arn,
      aws_ssm_parameter.secret_key.arn,
      aws_ssm_parameter.redis_auth_token.arn,
      aws_ssm_parameter.admin_password.arn,
    ]
  }

  statement {
    sid       = "WriteTheServiceLogs"
    effect    = "Allow"
    actions   = ["logs:CreateLogStream", "logs:PutLogEvents"]
    resources = ["${aws_cloudwatch_log_group.app.arn}:*"]
  }
}

resource "aws_iam_role" "app" {
  name               = "${local.prefix}-app"
  description        = "Application instances of ${local.prefix}"
  assume_role_policy = data.aws_iam_policy_document.app_assume_role.json
}

resource "aws_iam_role_policy" "app" {
  name   = "${local.prefix}-app"
  role   = aws_iam_role.app.id
  policy = data.aws_iam_policy_document.app.json
}

resource "aws_iam_instance_profile" "app" {
  name = "${local.prefix}-app"
  role = aws_iam_role.app.name
}
