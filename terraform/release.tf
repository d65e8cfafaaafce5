# The migrations, once per release: a one-off ECS task (Fargate) of the new image in its
# `migrate` role (`flask deploy upgrade`: the migrations, then the first admin when none
# exists), run by `terraform apply` when image_tag changes and before either Auto
# Scaling group rolls onto the new image (their depends_on). A failed migration fails the
# apply, and no instance is replaced. The old release keeps serving while it runs: each
# release's migrations only expand the schema (docs/deployment.md, "expand, then
# contract").

resource "aws_ecs_cluster" "release" {
  name = "${local.prefix}-release"
}

data "aws_iam_policy_document" "ecs_assume_role" {
  statement {
    sid     = "EcsTasksAssumeRole"
    effect  = "Allow"
    actions = ["sts:AssumeRole"]

    principals {
      type        = "Service"
      identifiers = ["ecs-tasks.amazonaws.com"]
    }
  }
}

# What ECS itself needs to start the task: pull the image, read the task's secrets, write
# its log. The task's own code needs no AWS permission (it sends no email).
data "aws_iam_policy_document" "migrate_execution" {
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
    sid     = "ReadTheMigrationSecrets"
    effect  = "Allow"
    actions = ["ssm:GetParameters"]
    resources = [
      aws_ssm_parameter.database_url.arn,
      aws_ssm_parameter.database_ca.arn,
      aws_ssm_parameter.secret_key.arn,
      aws_ssm_parameter.admin_password.arn,
    ]
  }

  statement {
    sid       = "WriteTheMigrationLog"
    effect    = "Allow"
    actions   = ["logs:CreateLogStream", "logs:PutLogEvents"]
    resources = ["${aws_cloudwatch_log_group.app.arn}:*"]
  }
}

resource "aws_iam_role" "migrate_execution" {
  name               = "${local.prefix}-migrate-execution"
  description        = "ECS starting the migration task of ${local.prefix}"
  assume_role_policy = data.aws_iam_policy_document.ecs_assume_role.json
}

resource "aws_iam_role_policy" "migrate_execution" {
  name   = "${local.prefix}-migrate-execution"
  role   = aws_iam_role.migrate_execution.id
  policy = data.aws_iam_policy_document.migrate_execution.json
}

resource "aws_ecs_task_definition" "migrate" {
  family                   = "${local.prefix}-migrate"
  requires_compatibilities = ["FARGATE"]
  network_mode             = "awsvpc"
  cpu                      = 256
  memory                   = 512
  execution_role_arn       = aws_iam_role.migrate_execution.arn

  container_definitions = jsonencode([
    {
      name      = "migrate"
      image     = local.image
      command   = ["migrate"]
      essential = true
      environment = [
        { name = "ADMIN_EMAIL", value = var.admin_email },
        { name = "EMAIL_SOURCE", value = var.email_source },
        { name = "REGION_NAME", value = var.region },
      ]
      secrets = [
        { name = "DATABASE_URL", valueFrom = aws_ssm_parameter.database_url.arn },
        { name = "DATABASE_CA_PEM", valueFrom = aws_ssm_parameter.database_ca.arn },
        { name = "SECRET_KEY", valueFrom = aws_ssm_parameter.secret_key.arn },
        { name = "ADMIN_PASSWORD", valueFrom = aws_ssm_parameter.admin_password.arn },
      ]
      stopTimeout = 30
      logConfiguration = {
        logDriver = "awslogs"
        options = {
          awslogs-group         = aws_cloudwatch_log_group.app.name
          awslogs-region        = var.region
          awslogs-stream-prefix = "migrate"
        }
      }
    }
  ])
}

# Runs the task when the image changes (or its definition does), waits for it to stop,
# and fails the apply unless it exited 0 (run_migration.sh; the AWS CLI of whoever runs
# terraform, with their credentials).
resource "terraform_data" "migrate" {
  triggers_replace = [var.image_tag, aws_ecs_task_definition.migrate.arn]

  provisioner "local-exec" {
    command = "${path.module}/run_migration.sh"
    environment = {
      REGION          = var.region
      CLUSTER         = aws_ecs_cluster.release.name
      TASK_DEFINITION = aws_ecs_task_definition.migrate.arn
      SUBNETS         = join(",", aws_subnet.private[*].id)
      SECURITY_GROUP  = aws_security_group.app.id
    }
  }

  # The task reaches the database, ECR and SSM through the private subnets' NAT.
  depends_on = [
    aws_route_table_association.private,
    aws_nat_gateway.main,
    aws_db_instance.main,
    aws_iam_role_policy.migrate_execution,
  ]
}
