# Who may talk to whom. The rules are separate resources (not inline blocks) so that each
# one is reviewed, and tested, on its own:
#   internet -> ALB      80 and 443 (the only rules open to 0.0.0.0/0)
#   ALB      -> app      80         (source: the ALB security group)
#   app      -> database 3306       (source: the app security group)
#   app      -> Redis    6379       (source: the app security group)
# Egress: the ALB only to the app on 80; the app to the database, to Redis and to HTTPS
# (ECR, SSM, SES, CloudWatch Logs, package mirrors, through the NAT gateway); the database
# and Redis none.

resource "aws_security_group" "alb" {
  name        = "${local.prefix}-alb"
  description = "Load balancer: HTTP and HTTPS from anywhere"
  vpc_id      = aws_vpc.main.id

  tags = { Name = "${local.prefix}-alb" }
}

resource "aws_security_group" "app" {
  name        = "${local.prefix}-app"
  description = "Application instances: HTTP from the load balancer only"
  vpc_id      = aws_vpc.main.id

  tags = { Name = "${local.prefix}-app" }
}

resource "aws_security_group" "db" {
  name        = "${local.prefix}-db"
  description = "Database: MySQL from the application instances only"
  vpc_id      = aws_vpc.main.id

  tags = { Name = "${local.prefix}-db" }
}

resource "aws_security_group" "redis" {
  name        = "${local.prefix}-redis"
  description = "Redis: TLS on 6379 from the application instances only"
  vpc_id      = aws_vpc.main.id

  tags = { Name = "${local.prefix}-redis" }
}

# --- ALB -----------------------------------------------------------------------------

resource "aws_vpc_security_group_ingress_rule" "alb_http" {
  security_group_id = aws_security_group.alb.id
  description       = "HTTP from the internet (redirected to HTTPS when a certificate is set)"
  ip_protocol       = "tcp"
  from_port         = 80
  to_port           = 80
  cidr_ipv4         = "0.0.0.0/0"
}

resource "aws_vpc_security_group_ingress_rule" "alb_https" {
  security_group_id = aws_security_group.alb.id
  description       = "HTTPS from the internet"
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
  cidr_ipv4         = "0.0.0.0/0"
}

resource "aws_vpc_security_group_egress_rule" "alb_to_app" {
  security_group_id            = aws_security_group.alb.id
  description                  = "Requests and health checks to the application instances"
  ip_protocol                  = "tcp"
  from_port                    = 80
  to_port                      = 80
  referenced_security_group_id = aws_security_group.app.id
}

# --- application instances -----------------------------------------------------------

resource "aws_vpc_security_group_ingress_rule" "app_from_alb" {
  security_group_id            = aws_security_group.app.id
  description                  = "HTTP from the load balancer only"
  ip_protocol                  = "tcp"
  from_port                    = 80
  to_port                      = 80
  referenced_security_group_id = aws_security_group.alb.id
}

resource "aws_vpc_security_group_egress_rule" "app_to_db" {
  security_group_id            = aws_security_group.app.id
  description                  = "MySQL to the database"
  ip_protocol                  = "tcp"
  from_port                    = 3306
  to_port                      = 3306
  referenced_security_group_id = aws_security_group.db.id
}

resource "aws_vpc_security_group_egress_rule" "app_to_redis" {
  security_group_id            = aws_security_group.app.id
  description                  = "Redis (TLS) to ElastiCache"
  ip_protocol                  = "tcp"
  from_port                    = local.redis_port
  to_port                      = local.redis_port
  referenced_security_group_id = aws_security_group.redis.id
}

resource "aws_vpc_security_group_egress_rule" "app_https" {
  security_group_id = aws_security_group.app.id
  description       = "HTTPS to AWS APIs (ECR, SSM, SES, CloudWatch Logs) and package mirrors, via NAT"
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
  cidr_ipv4         = "0.0.0.0/0"
}

# --- database ------------------------------------------------------------------------

resource "aws_vpc_security_group_ingress_rule" "db_from_app" {
  security_group_id            = aws_security_group.db.id
  description                  = "MySQL from the application instances only"
  ip_protocol                  = "tcp"
  from_port                    = 3306
  to_port                      = 3306
  referenced_security_group_id = aws_security_group.app.id
}

# --- Redis ---------------------------------------------------------------------------

resource "aws_vpc_security_group_ingress_rule" "redis_from_app" {
  security_group_id            = aws_security_group.redis.id
  description                  = "Redis (TLS) from the application instances only"
  ip_protocol                  = "tcp"
  from_port                    = local.redis_port
  to_port                      = local.redis_port
  referenced_security_group_id = aws_security_group.app.id
}
