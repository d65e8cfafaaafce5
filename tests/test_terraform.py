"""The deployment in terraform/ keeps its security rules.

The .tf files are parsed with python-hcl2: the database and Redis are private and
encrypted, only the app reaches MySQL and Redis, Redis never evicts, only the load balancer
is open to the internet and port 80 redirects to HTTPS, the instance role grants exactly
the allowed actions and reads exactly the parameters the boot script reads, no static AWS
keys exist, the state is in S3, the target group checks /readyz.

The real `terraform` runs too (offline: no provider, no state of the deployment):
`terraform fmt -check`, a plan of variables.tf alone (a certificate is required unless
allow_plain_http), and the boot script rendered by templatefile() and run by bash against
moto's SSM and ECR, with docker, dnf and systemctl stood in for on PATH (no Docker engine
here), to see the environment each container gets.

None of these tests uses the database fixtures of conftest.py, so each runs once.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import urllib.request
from functools import cache
from pathlib import Path

import hcl2
import pytest
from hcl2 import SerializationOptions

TERRAFORM_DIR = Path(__file__).resolve().parent.parent / "terraform"
USER_DATA_TEMPLATE = TERRAFORM_DIR / "user_data.sh.tftpl"

# Everything the application instances' role may do, and on what: the one list, kept in
# step with terraform/iam.tf (a grant added there must be added here too, knowingly).
# Each action maps to the pattern every Resource of a statement granting it must match.
ANY = r"\*"  # only for actions that have no resource-level scope
SES_IDENTITY = r"\$\{aws_ses_email_identity\.\w+\.arn\}"
ECR_REPOSITORY = r"\$\{aws_ecr_repository\.\w+\.arn\}"
SSM_PARAMETER = r"\$\{aws_ssm_parameter\.\w+\.arn\}"
LOG_GROUP_STREAMS = r"\$\{aws_cloudwatch_log_group\.\w+\.arn\}:\*"
ALLOWED_GRANTS = {
    "ses:SendEmail": SES_IDENTITY,
    "ses:SendRawEmail": SES_IDENTITY,
    "ecr:GetAuthorizationToken": ANY,
    "ecr:BatchGetImage": ECR_REPOSITORY,
    "ecr:GetDownloadUrlForLayer": ECR_REPOSITORY,
    "ecr:BatchCheckLayerAvailability": ECR_REPOSITORY,
    "ssm:GetParameter": SSM_PARAMETER,
    "ssm:GetParameters": SSM_PARAMETER,
    "logs:CreateLogStream": LOG_GROUP_STREAMS,
    "logs:PutLogEvents": LOG_GROUP_STREAMS,
}
ALLOWED_ACTIONS = frozenset(ALLOWED_GRANTS)

# Arguments of the aws provider and the s3 backend that take static keys.
CREDENTIAL_ARGUMENTS = frozenset({"access_key", "secret_key", "token"})
OPEN_CIDRS = frozenset({"0.0.0.0/0", "::/0"})
MYSQL_PORT = 3306

# Plain Python values: strings without their quotes, expressions as "${...}".
HCL_OPTIONS = SerializationOptions(
    with_comments=False, explicit_blocks=False, strip_string_quotes=True
)


# --- reading the configuration --------------------------------------------------------


@cache
def parsed() -> tuple[tuple[str, dict], ...]:
    files = sorted(TERRAFORM_DIR.glob("*.tf"))
    assert files, f"no .tf files in {TERRAFORM_DIR}"
    return tuple(
        (path.name, hcl2.loads(path.read_text(), serialization_options=HCL_OPTIONS))
        for path in files
    )


def blocks(kind: str, type_: str | None = None) -> list[tuple[str, str, dict]]:
    """(type, name, body) of every `kind` block (resource, data), of one type or all."""
    found = []
    for _, doc in parsed():
        for entry in doc.get(kind, []):
            for block_type, named in entry.items():
                if type_ is not None and block_type != type_:
                    continue
                for name, body in named.items():
                    found.append((block_type, name, body))
    return found


def resources(type_: str) -> dict[str, dict]:
    return {name: body for _, name, body in blocks("resource", type_)}


def variable(name: str) -> dict:
    found = [
        body
        for _, doc in parsed()
        for entry in doc.get("variable", [])
        for n, body in entry.items()
        if n == name
    ]
    assert len(found) == 1, f"variable {name!r} must be declared once, found {len(found)}"
    return found[0]


def as_list(value) -> list:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def nested(body: dict, key: str) -> list[dict]:
    """A nested block (parsed as a list of dicts) or an object attribute, as a list."""
    return [item for item in as_list(body.get(key)) if isinstance(item, dict)]


def ref_name(value, type_: str, attribute: str = "id") -> str | None:
    """`x` when value is exactly "${<type_>.x.<attribute>}", else None."""
    if not isinstance(value, str):
        return None
    match = re.fullmatch(rf"\$\{{{re.escape(type_)}\.(\w+)\.{attribute}\}}", value)
    return match.group(1) if match else None


def referenced_groups(values) -> set[str | None]:
    return {ref_name(value, "aws_security_group") for value in as_list(values)}


def one_group(values, role: str) -> str:
    names = referenced_groups(values)
    assert len(names) == 1 and None not in names, (
        f"the {role} must use exactly one security group of this configuration, got {values!r}"
    )
    return names.pop()


def alb_group() -> str:
    albs = resources("aws_lb")
    assert len(albs) == 1, f"expected one load balancer, found {sorted(albs)}"
    return one_group(next(iter(albs.values())).get("security_groups"), "load balancer")


def app_group() -> str:
    templates = resources("aws_launch_template")
    assert len(templates) == 1, f"expected one launch template, found {sorted(templates)}"
    template = next(iter(templates.values()))
    assert not nested(template, "network_interfaces"), (
        "the launch template's security groups must be in vpc_security_group_ids"
    )
    return one_group(template.get("vpc_security_group_ids"), "launch template")


def db_instances() -> dict[str, dict]:
    instances = resources("aws_db_instance")
    assert instances, "no aws_db_instance in terraform/"
    return instances


def db_group() -> str:
    groups = {
        one_group(body.get("vpc_security_group_ids"), f"database {name}")
        for name, body in db_instances().items()
    }
    assert len(groups) == 1, f"the database instances use different security groups: {groups}"
    return groups.pop()


def ingress_rules() -> list[dict]:
    """Every ingress rule, whichever of the provider's three forms declares it.

    Each as {where, group, from, to, protocol, cidrs, sources, other}: `group` is the
    name of the aws_security_group it opens (None: not one of this configuration's),
    `sources` the names of the security groups it admits (None for a reference that is
    not one), `other` any other kind of source (prefix list, self).
    """
    rules = []

    def add(where, group, body, cidr_keys, source_keys, other_keys):
        rules.append(
            {
                "where": where,
                "group": group,
                "from": body.get("from_port"),
                "to": body.get("to_port"),
                "protocol": str(body.get("ip_protocol", body.get("protocol", ""))),
                "cidrs": {cidr for key in cidr_keys for cidr in as_list(body.get(key))},
                "sources": {
                    ref_name(value, "aws_security_group")
                    for key in source_keys
                    for value in as_list(body.get(key))
                },
                "other": {key: body[key] for key in other_keys if body.get(key)},
            }
        )

    for type_ in ("aws_security_group", "aws_default_security_group"):
        for name, body in resources(type_).items():
            for rule in nested(body, "ingress"):
                add(
                    f"{type_}.{name} ingress",
                    name if type_ == "aws_security_group" else None,
                    rule,
                    ("cidr_blocks", "ipv6_cidr_blocks"),
                    ("security_groups",),
                    ("prefix_list_ids", "self"),
                )
    for name, body in resources("aws_security_group_rule").items():
        if body.get("type") == "ingress":
            add(
                f"aws_security_group_rule.{name}",
                ref_name(body.get("security_group_id"), "aws_security_group"),
                body,
                ("cidr_blocks", "ipv6_cidr_blocks"),
                ("source_security_group_id",),
                ("prefix_list_ids", "self"),
            )
    for name, body in resources("aws_vpc_security_group_ingress_rule").items():
        add(
            f"aws_vpc_security_group_ingress_rule.{name}",
            ref_name(body.get("security_group_id"), "aws_security_group"),
            body,
            ("cidr_ipv4", "cidr_ipv6"),
            ("referenced_security_group_id",),
            ("prefix_list_id",),
        )
    return rules


def covers_port(rule: dict, port: int) -> bool:
    if rule["protocol"] in {"-1", "all"}:
        return True
    try:
        return int(rule["from"]) <= port <= int(rule["to"])
    except (TypeError, ValueError):
        return True  # a port range that is not a literal: assume the worst


# --- IAM policies ---------------------------------------------------------------------


def trust_documents() -> set[str]:
    """Names of the aws_iam_policy_document data sources used as assume-role policies."""
    names = set()
    for body in resources("aws_iam_role").values():
        name = ref_name(body.get("assume_role_policy"), "data.aws_iam_policy_document", "json")
        assert name, f"assume_role_policy must be an aws_iam_policy_document: {body!r}"
        names.add(name)
    return names


def policy_json_statements(text: str) -> list[dict]:
    """Statements of a policy written as jsonencode({...}) or a JSON string."""
    statements = []
    for match in re.finditer(
        r'"?(Not)?Action"?\s*[=:]\s*(\[[^\]]*\]|"[^"]*")', text, flags=re.IGNORECASE
    ):
        actions = re.findall(r'"([^"]+)"', match.group(2))
        statements.append({"actions": actions, "not": bool(match.group(1))})
    return statements


def permission_statements() -> list[dict]:
    """Every Allow statement that grants permissions (trust policies aside), as
    {where, actions, resources, not}."""
    trust = trust_documents()
    statements = []
    for _, name, body in blocks("data", "aws_iam_policy_document"):
        if name in trust:
            continue
        for statement in nested(body, "statement"):
            if statement.get("effect", "Allow") != "Allow":
                continue
            statements.append(
                {
                    "where": f"data.aws_iam_policy_document.{name}",
                    "actions": as_list(statement.get("actions"))
                    + as_list(statement.get("not_actions")),
                    "not": bool(statement.get("not_actions"))
                    or bool(statement.get("not_resources")),
                    "resources": as_list(statement.get("resources")),
                }
            )
    # Policies written inline as JSON rather than as a policy document.
    for type_ in ("aws_iam_role_policy", "aws_iam_policy", "aws_iam_user_policy"):
        for name, body in resources(type_).items():
            policy = str(body.get("policy", ""))
            if ref_name(policy, "data.aws_iam_policy_document", "json"):
                continue
            for statement in policy_json_statements(policy):
                statements.append({"where": f"{type_}.{name}", "resources": None, **statement})
    for name, body in resources("aws_iam_role").items():
        for inline in nested(body, "inline_policy"):
            for statement in policy_json_statements(str(inline.get("policy", ""))):
                statements.append(
                    {"where": f"aws_iam_role.{name} inline", "resources": None, **statement}
                )
    return statements


# --- the tests ------------------------------------------------------------------------


def test_backend_is_s3_with_a_bucket_and_aws_pinned_to_a_major_version():
    text = (TERRAFORM_DIR / "terraform.tf").read_text()
    (settings,) = hcl2.loads(text, serialization_options=HCL_OPTIONS)["terraform"]
    (backend,) = settings["backend"]
    assert list(backend) == ["s3"], f"the backend must be s3, got {list(backend)}"
    s3 = backend["s3"]
    bucket = s3.get("bucket")
    assert isinstance(bucket, str) and re.fullmatch(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", bucket), (
        f"the S3 backend needs a literal bucket name in terraform/terraform.tf, got {bucket!r}"
    )
    assert s3.get("key"), "the S3 backend needs a state key"
    assert s3.get("encrypt") is True, "the state holds secrets: the S3 backend must encrypt it"

    (providers,) = settings["required_providers"]
    aws = providers["aws"]
    assert aws["source"] == "hashicorp/aws"
    assert re.fullmatch(r"~>\s*\d+\.\d+", aws["version"]), (
        f"pin the aws provider to a major version (~> N.0), got {aws['version']!r}"
    )


def test_databases_are_private_and_encrypted():
    instances = db_instances()
    assert "main" in instances, "the primary database is aws_db_instance.main"
    for name, body in instances.items():
        assert body.get("publicly_accessible") is False, f"aws_db_instance.{name} is public"
        assert body.get("storage_encrypted") is True, f"aws_db_instance.{name} is not encrypted"
        assert "${random_password." in str(body.get("password", "${random_password.")), (
            f"aws_db_instance.{name}: the password must be generated, not written down"
        )

    primary = instances["main"]
    assert primary["engine"] == "mysql" and str(primary["engine_version"]).startswith(
        ("8", "${var.")
    )
    assert primary.get("db_subnet_group_name"), "the primary must be placed in a subnet group"
    assert primary.get("backup_retention_period") not in (None, 0), "backups must be on"
    assert primary.get("multi_az") == "${var.db_multi_az}"
    assert primary.get("deletion_protection") == "${var.db_deletion_protection}"

    replicas = {n: b for n, b in instances.items() if b.get("replicate_source_db")}
    assert set(replicas) == {"replica"}, "one optional read replica, aws_db_instance.replica"
    assert replicas["replica"].get("count") == "${var.create_read_replica ? 1 : 0}"


def test_everything_stored_is_encrypted():
    for name, body in db_instances().items():
        assert body.get("storage_encrypted") is True, f"aws_db_instance.{name}"
    for name, body in resources("aws_launch_template").items():
        volumes = [
            ebs
            for mapping in nested(body, "block_device_mappings")
            for ebs in nested(mapping, "ebs")
        ]
        assert volumes, f"aws_launch_template.{name} must declare its (encrypted) root volume"
        for ebs in volumes:
            assert ebs.get("encrypted") is True, f"aws_launch_template.{name}: EBS not encrypted"
    for type_ in ("aws_ebs_volume", "aws_instance"):
        for name, body in resources(type_).items():
            volume_blocks = (
                [body] if type_ == "aws_ebs_volume" else nested(body, "root_block_device")
            )
            for volume in volume_blocks:
                assert volume.get("encrypted") is True, f"{type_}.{name}: not encrypted"
    parameters = resources("aws_ssm_parameter")
    assert parameters, "the secrets must be kept in SSM Parameter Store"
    for name, body in parameters.items():
        assert body.get("type") == "SecureString", f"aws_ssm_parameter.{name} is not encrypted"
        assert str(body.get("value", "")).startswith("${random_password."), (
            f"aws_ssm_parameter.{name}: the secret must be generated by random_password"
        )


def test_only_the_app_security_group_reaches_mysql():
    app, db = app_group(), db_group()
    assert app != db
    db_rules = [rule for rule in ingress_rules() if rule["group"] == db]
    assert db_rules, "the database security group admits nothing: the app could not connect"
    for rule in db_rules:
        assert not rule["cidrs"], f"{rule['where']}: the database must not admit CIDR blocks"
        assert not rule["other"], f"{rule['where']}: the database admits {rule['other']}"
        assert rule["sources"] == {app}, (
            f"{rule['where']}: the database must admit only the app security group "
            f"({app}), got {rule['sources']}"
        )
        assert (rule["from"], rule["to"]) == (MYSQL_PORT, MYSQL_PORT), (
            f"{rule['where']}: the database rule must open port {MYSQL_PORT} only"
        )
    # No other group (the database has only db) opens MySQL to anyone else either.
    for rule in ingress_rules():
        if rule["group"] != db and covers_port(rule, MYSQL_PORT):
            assert not rule["cidrs"], f"{rule['where']} opens port {MYSQL_PORT} to {rule['cidrs']}"


def test_nothing_but_the_load_balancer_is_open_to_the_internet():
    alb, app = alb_group(), app_group()
    rules = ingress_rules()
    open_rules = [rule for rule in rules if rule["cidrs"] & OPEN_CIDRS]
    assert open_rules, "the load balancer must be reachable from the internet"
    for rule in open_rules:
        assert rule["group"] == alb, (
            f"{rule['where']} admits {sorted(rule['cidrs'])}: only the load balancer's "
            f"security group ({alb}) may"
        )
        assert (rule["from"], rule["to"]) in {(80, 80), (443, 443)}, (
            f"{rule['where']}: the load balancer is open on 80 and 443 only"
        )
    for rule in rules:
        if rule["cidrs"] - OPEN_CIDRS and rule["group"] != alb:
            raise AssertionError(f"{rule['where']} admits CIDR blocks {sorted(rule['cidrs'])}")
    for rule in rules:
        if rule["group"] == app:
            assert rule["sources"] == {alb} and not rule["cidrs"] and not rule["other"], (
                f"{rule['where']}: the app instances admit traffic only from the load balancer"
            )
            assert (rule["from"], rule["to"]) == (80, 80), f"{rule['where']}: port 80 only"
        assert rule["group"] is not None or not (rule["cidrs"] or rule["sources"]), (
            f"{rule['where']} opens a security group this test cannot identify"
        )


def test_app_instances_have_no_public_address():
    (group,) = resources("aws_autoscaling_group").values()
    subnets = as_list(group.get("vpc_zone_identifier"))
    assert subnets == ["${aws_subnet.private[*].id}"], (
        f"the app instances must run in the private subnets, got {subnets}"
    )
    subnets = resources("aws_subnet")
    assert subnets["private"].get("map_public_ip_on_launch") is False
    (template,) = resources("aws_launch_template").values()
    for interface in nested(template, "network_interfaces"):
        assert interface.get("associate_public_ip_address") is not True
    (metadata,) = nested(template, "metadata_options")
    assert metadata.get("http_tokens") == "required", "the instances must require IMDSv2"


def test_instance_role_grants_only_the_allowed_actions():
    statements = permission_statements()
    assert statements, "no IAM permissions found"
    for statement in statements:
        assert not statement["not"], f"{statement['where']}: no NotAction / NotResource"
    granted = {action for statement in statements for action in statement["actions"]}
    assert granted == ALLOWED_ACTIONS, (
        f"not allowed: {sorted(granted - ALLOWED_ACTIONS)}; "
        f"allowed but not granted: {sorted(ALLOWED_ACTIONS - granted)}"
    )

    for statement in statements:
        where, actions, targets = statement["where"], statement["actions"], statement["resources"]
        assert targets, f"{where}: write the policy as an aws_iam_policy_document with resources"
        for action in actions:
            for target in targets:
                assert re.fullmatch(ALLOWED_GRANTS[action], target), (
                    f"{where}: {action} on {target!r}, allowed only on {ALLOWED_GRANTS[action]}"
                )

    # Managed policies would grant actions that this test cannot see.
    for type_ in ("aws_iam_role_policy_attachment", "aws_iam_policy_attachment"):
        assert not resources(type_), f"{type_}: attach no managed policy to the instance role"
    for name, body in resources("aws_iam_role").items():
        assert not body.get("managed_policy_arns"), f"aws_iam_role.{name}: managed policies"

    (trust_name,) = trust_documents()
    (trust,) = [b for _, n, b in blocks("data", "aws_iam_policy_document") if n == trust_name]
    (statement,) = nested(trust, "statement")
    assert statement["actions"] == ["sts:AssumeRole"]
    (principal,) = nested(statement, "principals")
    assert (principal["type"], principal["identifiers"]) == ("Service", ["ec2.amazonaws.com"])


def test_no_static_aws_keys():
    sources = [*sorted(TERRAFORM_DIR.glob("*.tf")), USER_DATA_TEMPLATE]
    key_id = re.compile(r"\b(AKIA|ASIA|ABIA|ACCA|AIDA)[A-Z0-9]{16}\b")
    credential_names = re.compile(
        r"aws_access_key_id|aws_secret_access_key|aws_session_token", re.IGNORECASE
    )
    for path in sources:
        text = path.read_text()
        assert not key_id.search(text), f"{path.name} contains an AWS access key id"
        assert not credential_names.search(text), f"{path.name} sets AWS credentials"
    for _, doc in parsed():
        for provider in as_list(doc.get("provider")):
            for name, body in provider.items():
                for body_ in as_list(body):
                    assert not CREDENTIAL_ARGUMENTS & set(body_), f"provider {name} sets keys"
        for settings in as_list(doc.get("terraform")):
            for backend in as_list(settings.get("backend")):
                for body in backend.values():
                    assert not CREDENTIAL_ARGUMENTS & set(body), "the backend sets credentials"
    assert not resources("aws_iam_access_key"), "no IAM access keys: the instances use a role"
    assert not resources("aws_iam_user"), "no IAM users: the instances use a role"


def test_target_group_health_check_is_readyz():
    groups = resources("aws_lb_target_group")
    assert groups, "no target group"
    for name, body in groups.items():
        (check,) = nested(body, "health_check")
        assert check.get("path") == "/readyz", f"aws_lb_target_group.{name} checks {check}"
        assert check.get("enabled", True) is True


def test_https_listener_exists_only_with_a_certificate():
    listeners = resources("aws_lb_listener")
    assert listeners["https"].get("count") == "${local.https_enabled ? 1 : 0}"
    locals_ = [body for _, doc in parsed() for body in as_list(doc.get("locals"))]
    assert any(body.get("https_enabled") == '${var.certificate_arn != ""}' for body in locals_), (
        "https_enabled must follow var.certificate_arn"
    )
    assert "count" not in listeners["http"], "port 80 always answers (serves or redirects)"


def test_port_80_redirects_to_https_under_a_modern_tls_policy():
    listeners = resources("aws_lb_listener")
    http, https = listeners["http"], listeners["https"]
    assert (http.get("port"), http.get("protocol")) == (80, "HTTP")
    (action,) = nested(http, "default_action")
    assert action.get("type") == '${local.https_enabled ? "redirect" : "forward"}', (
        "with a certificate, port 80 must redirect (and forward only without one)"
    )
    (dynamic,) = nested(action, "dynamic")
    redirect = dynamic["redirect"]
    assert redirect.get("for_each") == "${local.https_enabled ? [1] : []}"
    (content,) = nested(redirect, "content")
    assert (content.get("protocol"), str(content.get("port")), content.get("status_code")) == (
        "HTTPS",
        "443",
        "HTTP_301",
    ), f"port 80 must answer 301 to https on 443, got {content}"

    assert (https.get("port"), https.get("protocol")) == (443, "HTTPS")
    assert https.get("certificate_arn") == "${var.certificate_arn}"
    assert https.get("ssl_policy") == "${var.ssl_policy}"
    policy = variable("ssl_policy")
    assert re.fullmatch(r"ELBSecurityPolicy-TLS13-1-[23]-.+", policy["default"]), (
        f"the default TLS policy must allow TLS 1.2 and 1.3 only, got {policy['default']}"
    )


# --- Redis (ElastiCache) --------------------------------------------------------------

REDIS_PORT = 6379


def redis_group() -> tuple[str, dict]:
    groups = resources("aws_elasticache_replication_group")
    assert list(groups) == ["redis"], f"expected aws_elasticache_replication_group.redis: {groups}"
    assert not resources("aws_elasticache_cluster"), "Redis is the replication group only"
    return "redis", groups["redis"]


def literal_port(value) -> int | None:
    """The port a from_port/to_port names: a number, or local.redis_port."""
    if value == "${local.redis_port}":
        (redis_port,) = {
            b["redis_port"]
            for _, doc in parsed()
            for b in as_list(doc.get("locals"))
            if "redis_port" in b
        }
        return int(redis_port)
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def test_redis_is_private_encrypted_and_admits_only_the_app():
    _, redis = redis_group()
    assert redis.get("engine") == "redis"
    assert redis.get("at_rest_encryption_enabled") is True, "Redis must be encrypted at rest"
    assert redis.get("transit_encryption_enabled") is True, "Redis must require TLS"
    assert redis.get("transit_encryption_mode", "required") == "required"
    assert redis.get("auth_token") == "${random_password.redis_auth_token.result}", (
        "Redis needs a generated AUTH token"
    )
    assert literal_port(redis.get("port")) == REDIS_PORT

    subnet_group = ref_name(redis.get("subnet_group_name"), "aws_elasticache_subnet_group", "name")
    assert subnet_group, "Redis must be placed in a subnet group of this configuration"
    subnets = resources("aws_elasticache_subnet_group")[subnet_group].get("subnet_ids")
    assert subnets == "${aws_subnet.private[*].id}", (
        f"Redis must be in the private subnets: {subnets}"
    )

    app, db, alb = app_group(), db_group(), alb_group()
    group = one_group(redis.get("security_group_ids"), "Redis replication group")
    assert group not in {app, db, alb}, "Redis needs a security group of its own"
    rules = [rule for rule in ingress_rules() if rule["group"] == group]
    assert rules, "the Redis security group admits nothing: the app could not connect"
    for rule in rules:
        assert not rule["cidrs"] and not rule["other"], (
            f"{rule['where']}: Redis must admit the app security group only, not "
            f"{rule['cidrs'] or rule['other']}"
        )
        assert rule["sources"] == {app}, f"{rule['where']}: Redis admits {rule['sources']}"
        assert (literal_port(rule["from"]), literal_port(rule["to"])) == (REDIS_PORT, REDIS_PORT)
    egress = [
        body
        for body in resources("aws_vpc_security_group_egress_rule").values()
        if ref_name(body.get("security_group_id"), "aws_security_group") == app
        and ref_name(body.get("referenced_security_group_id"), "aws_security_group") == group
    ]
    assert [literal_port(body.get("from_port")) for body in egress] == [REDIS_PORT], (
        "the app security group needs one egress rule to Redis on 6379"
    )


def test_redis_never_evicts_and_keeps_snapshots():
    _, redis = redis_group()
    name = ref_name(redis.get("parameter_group_name"), "aws_elasticache_parameter_group", "name")
    assert name, "Redis must use a parameter group of this configuration (maxmemory-policy)"
    parameters = {
        item["name"]: item["value"]
        for item in nested(resources("aws_elasticache_parameter_group")[name], "parameter")
    }
    assert parameters.get("maxmemory-policy") == "noeviction", (
        "the views stream must never be evicted: maxmemory-policy must be noeviction, "
        f"got {parameters.get('maxmemory-policy')!r}"
    )

    assert redis.get("snapshot_retention_limit") == "${var.redis_snapshot_retention_days}"
    retention = variable("redis_snapshot_retention_days")
    assert retention["default"] >= 1, "daily snapshots must be on by default"
    assert redis.get("final_snapshot_identifier"), "a destroy must keep a last snapshot"
    assert redis.get("num_cache_clusters") == "${var.redis_multi_az ? 2 : 1}"
    for setting in ("automatic_failover_enabled", "multi_az_enabled"):
        assert redis.get(setting) == "${var.redis_multi_az}", f"{setting} follows redis_multi_az"


# --- what the instances are given -----------------------------------------------------


def template_arguments() -> dict[str, str]:
    """The variables compute.tf passes to user_data.sh.tftpl, as name -> expression."""
    (template,) = resources("aws_launch_template").values()
    user_data = str(template.get("user_data", ""))
    call = re.fullmatch(
        r"\$\{base64encode\(templatefile\(\"\$\{path\.module\}/user_data\.sh\.tftpl\", "
        r"\{(.*)\}\)\)\}",
        user_data,
        flags=re.S,
    )
    assert call, f"the user data must be templatefile(user_data.sh.tftpl, {{...}}): {user_data}"
    pairs = re.findall(r"(?:^|, )(\w+) = (.*?)(?=, \w+ = |$)", call.group(1), flags=re.S)
    assert pairs, "the template is given no variables"
    return dict(pairs)


def test_secrets_reach_the_instances_only_through_ssm():
    arguments = template_arguments()
    for name, expression in arguments.items():
        for leak in ("random_password", ".result", ".value", ".auth_token", "password ="):
            assert leak not in expression, f"the user data is given a secret: {name} = {expression}"
        if "aws_ssm_parameter." in expression:
            assert re.fullmatch(r"aws_ssm_parameter\.\w+\.name", expression), (
                f"{name}: the user data may hold a parameter's name only, got {expression}"
            )

    script = USER_DATA_TEMPLATE.read_text()
    assert "aws ssm get-parameter" in script and "--with-decryption" in script
    assert "aws ecr get-login-password" in script
    assert re.search(r"%\{ if stats_db_host != \"\" ~\}.*-e STATS_DATABASE_URL", script, re.S), (
        "STATS_DATABASE_URL is given when (and only when) the read replica exists"
    )
    assert "replica" in arguments["stats_db_host"]


def test_instance_role_reads_exactly_the_parameters_the_instances_read():
    parameters = set(resources("aws_ssm_parameter"))
    assert {"db_password", "secret_key", "redis_auth_token", "admin_password"} <= parameters
    read = {
        match.group(1)
        for expression in template_arguments().values()
        if (match := re.fullmatch(r"aws_ssm_parameter\.(\w+)\.name", expression))
    }
    assert read == parameters, (
        f"parameters the instances are not told about: {sorted(parameters - read)}"
    )
    granted = {
        ref_name(target, "aws_ssm_parameter", "arn")
        for statement in permission_statements()
        if any(action.startswith("ssm:") for action in statement["actions"])
        for target in statement["resources"] or []
    }
    assert granted == read, (
        f"the role must read exactly the parameters the boot script reads: granted "
        f"{sorted(map(str, granted))}, read {sorted(read)}"
    )


def test_admin_password_is_generated_and_kept_in_ssm():
    passwords = resources("random_password")
    assert "admin" in passwords and int(passwords["admin"]["length"]) >= 16
    parameter = resources("aws_ssm_parameter")["admin_password"]
    assert parameter["value"] == "${random_password.admin.result}"
    assert parameter["type"] == "SecureString"
    assert template_arguments()["admin_password_parameter"] == (
        "aws_ssm_parameter.admin_password.name"
    )
    assert template_arguments()["admin_email"] == "var.admin_email"


def test_trusted_proxies_are_the_load_balancer_subnets():
    (alb,) = resources("aws_lb").values()
    subnets = re.fullmatch(r"\$\{aws_subnet\.(\w+)\[\*\]\.id\}", str(alb.get("subnets")))
    assert subnets, f"the load balancer's subnets: {alb.get('subnets')}"
    (trusted,) = {
        body["trusted_proxies"]
        for _, doc in parsed()
        for body in as_list(doc.get("locals"))
        if "trusted_proxies" in body
    }
    assert trusted == f'${{join(",", aws_subnet.{subnets.group(1)}[*].cidr_block)}}', (
        f"TRUSTED_PROXIES must be the CIDR blocks of the load balancer's subnets, got {trusted}"
    )
    assert template_arguments()["trusted_proxies"] == "local.trusted_proxies"


# --- running the real terraform (offline: no provider, no state) -----------------------


@cache
def terraform_binary() -> str:
    """terraform on PATH (or beside this Python). Required: these tests do not skip."""
    found = shutil.which("terraform") or shutil.which(
        "terraform", path=str(Path(sys.executable).parent)
    )
    assert found, (
        "terraform is not installed: the terraform tests run the real `terraform` (fmt, "
        "variable validation, templatefile). Install Terraform >= 1.10 on PATH."
    )
    version = subprocess.run(
        [found, "version", "-json"], capture_output=True, text=True, timeout=60, check=True
    )
    major, minor = map(
        int, re.match(r"(\d+)\.(\d+)", json.loads(version.stdout)["terraform_version"]).groups()
    )
    assert (major, minor) >= (1, 10), f"terraform >= 1.10 is required, {found} is {major}.{minor}"
    return found


def terraform(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "TF_IN_AUTOMATION": "1",
        "TF_CLI_CONFIG_FILE": os.devnull,
        "TF_DATA_DIR": str(workdir / ".terraform"),
        "CHECKPOINT_DISABLE": "1",
    }
    return subprocess.run(
        [terraform_binary(), f"-chdir={workdir}", *args, "-no-color"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=env,
    )


REQUIRED_VARIABLES = {
    "image_tag": "release-1",
    "email_source": "notifications@example.com",
    "admin_email": "admin@example.com",
}
CERTIFICATE = "arn:aws:acm:us-east-1:123456789012:certificate/0a1b2c3d-4e5f-6789-abcd-ef0123456789"


def plan_variables(tmp_path: Path, **values) -> subprocess.CompletedProcess:
    """`terraform plan` of variables.tf alone: runs every variable's validation rules."""
    workdir = tmp_path / f"plan-{len(list(tmp_path.iterdir()))}"
    workdir.mkdir()
    shutil.copy(TERRAFORM_DIR / "variables.tf", workdir)
    (workdir / "terraform.tfvars.json").write_text(json.dumps({**REQUIRED_VARIABLES, **values}))
    return terraform(workdir, "plan", "-input=false", "-lock=false", "-refresh=false")


def test_a_certificate_is_required_unless_plain_http_is_allowed(tmp_path):
    refused = plan_variables(tmp_path)
    assert refused.returncode != 0, "a plan without certificate_arn must fail"
    assert "certificate_arn must be set" in refused.stderr, refused.stderr
    assert "allow_plain_http = true" in refused.stderr, "the error must say how to opt out"

    with_certificate = plan_variables(tmp_path, certificate_arn=CERTIFICATE)
    assert with_certificate.returncode == 0, with_certificate.stderr
    plain = plan_variables(tmp_path, allow_plain_http=True)
    assert plain.returncode == 0, plain.stderr

    not_an_arn = plan_variables(tmp_path, certificate_arn="my-certificate")
    assert not_an_arn.returncode != 0 and "ACM certificate ARN" in not_an_arn.stderr
    old_tls = plan_variables(
        tmp_path, certificate_arn=CERTIFICATE, ssl_policy="ELBSecurityPolicy-2016-08"
    )
    assert old_tls.returncode != 0 and "ssl_policy must be" in old_tls.stderr, old_tls.stderr


# --- the boot script, rendered by terraform and run against moto -----------------------

SCRIPT_VALUES = {
    "region": "us-east-1",
    "registry": "123456789012.dkr.ecr.us-east-1.amazonaws.com",
    "image": "123456789012.dkr.ecr.us-east-1.amazonaws.com/marketplace:release-1",
    "log_group": "/marketplace/production/app",
    "db_password_parameter": "/marketplace/production/db_password",
    "secret_key_parameter": "/marketplace/production/secret_key",
    "redis_auth_token_parameter": "/marketplace/production/redis_auth_token",
    "admin_password_parameter": "/marketplace/production/admin_password",
    "db_username": "marketplace",
    "db_name": "marketplace",
    "db_host": "marketplace-production.abc.us-east-1.rds.amazonaws.com",
    "db_port": "3306",
    "stats_db_host": "",
    "redis_host": "master.marketplace-production-redis.abc.use1.cache.amazonaws.com",
    "redis_port": "6379",
    "trusted_proxies": "10.20.0.0/24,10.20.1.0/24",
    "email_source": "notifications@example.com",
    "admin_email": "admin@example.com",
    "migrate_command": "flask deploy upgrade",
}
SECRETS = {
    "db_password_parameter": "dbpass" + "D" * 26,
    "secret_key_parameter": "secret" + "S" * 58,
    "redis_auth_token_parameter": "token" + "T" * 59,
    "admin_password_parameter": "admin" + "A" * 19,
}

# The two AWS CLI calls the boot script makes, through boto3 (against moto's server).
AWS_CLI = """#!{python}
import base64, sys
import boto3
args = sys.argv[1:]
region = args[args.index("--region") + 1]
if args[:2] == ["ssm", "get-parameter"]:
    assert args[args.index("--query") + 1] == "Parameter.Value"
    assert args[args.index("--output") + 1] == "text"
    answer = boto3.client("ssm", region_name=region).get_parameter(
        Name=args[args.index("--name") + 1], WithDecryption="--with-decryption" in args
    )
    print(answer["Parameter"]["Value"])
elif args[:2] == ["ecr", "get-login-password"]:
    data = boto3.client("ecr", region_name=region).get_authorization_token()
    token = data["authorizationData"][0]["authorizationToken"]
    print(base64.b64decode(token).decode().split(":", 1)[1])
else:
    sys.exit("aws: unexpected call " + " ".join(args))
"""
# No Docker engine here: docker records each call, and the value of every `-e NAME`.
DOCKER = """#!{python}
import json, os, sys
args = sys.argv[1:]
names = [args[i + 1] for i, arg in enumerate(args) if arg == "-e"]
stdin = sys.stdin.read() if "--password-stdin" in args else None
with open(os.environ["DOCKER_CALLS"], "a") as calls:
    calls.write(json.dumps({{"args": args, "env": {{n: os.environ.get(n) for n in names}},
                             "stdin": stdin}}) + "\\n")
"""


def render_user_data(tmp_path: Path, values: dict) -> str:
    """user_data.sh.tftpl rendered by terraform's own templatefile()."""
    workdir = tmp_path / "render"
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir()
    (workdir / "main.tf").write_text(
        'variable "values" {\n  type = map(string)\n}\n\n'
        f'output "user_data" {{\n  value = templatefile("{USER_DATA_TEMPLATE}", var.values)\n}}\n'
    )
    (workdir / "terraform.tfvars.json").write_text(json.dumps({"values": values}))
    applied = terraform(workdir, "apply", "-auto-approve", "-input=false", "-lock=false")
    assert applied.returncode == 0, applied.stdout + applied.stderr
    output = terraform(workdir, "output", "-raw", "user_data")
    assert output.returncode == 0, output.stderr
    return output.stdout


@pytest.fixture
def moto_aws(monkeypatch):
    """moto's server on a free loopback port, with the service's parameters and ECR."""
    from moto.server import ThreadedMotoServer

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    try:
        import boto3

        # moto's backends live in this process and outlast a server: start from nothing.
        urllib.request.urlopen(
            urllib.request.Request(f"{env['AWS_ENDPOINT_URL']}/moto-api/reset", method="POST"),
            timeout=30,
        ).close()
        ssm = boto3.client("ssm", region_name="us-east-1")
        for key, secret in SECRETS.items():
            ssm.put_parameter(Name=SCRIPT_VALUES[key], Value=secret, Type="SecureString")
        boto3.client("ecr", region_name="us-east-1").create_repository(repositoryName="marketplace")
        yield env
    finally:
        server.stop()


def run_user_data(tmp_path: Path, **overrides) -> tuple[str, list[dict]]:
    """Render the boot script and run it with bash: AWS is moto, docker/dnf/systemctl
    are stand-ins on PATH. Returns the script and the docker calls, with the environment
    each got."""
    script = render_user_data(tmp_path, {**SCRIPT_VALUES, **overrides})
    syntax = subprocess.run(["bash", "-n"], input=script, capture_output=True, text=True)
    assert syntax.returncode == 0, f"the rendered boot script is not valid bash: {syntax.stderr}"
    bin_dir = tmp_path / "bin"
    shutil.rmtree(bin_dir, ignore_errors=True)
    bin_dir.mkdir()
    for name, text in {
        "aws": AWS_CLI.format(python=sys.executable),
        "docker": DOCKER.format(python=sys.executable),
        "dnf": "#!/bin/sh\nexit 0\n",
        "systemctl": "#!/bin/sh\nexit 0\n",
    }.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    calls = tmp_path / "docker-calls.jsonl"
    calls.unlink(missing_ok=True)
    (tmp_path / "user_data.sh").write_text(script)
    ran = subprocess.run(
        ["bash", str(tmp_path / "user_data.sh")],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "DOCKER_CALLS": str(calls)},
    )
    assert ran.returncode == 0, f"the boot script failed:\n{ran.stdout}\n{ran.stderr}"
    return script, [json.loads(line) for line in calls.read_text().splitlines()]


def docker_runs(calls: list[dict]) -> dict[str, dict]:
    runs = {}
    for call in calls:
        if call["args"][:1] == ["run"]:
            name = call["args"][call["args"].index("--name") + 1]
            runs[name] = call
    return runs


def test_boot_script_gives_the_service_its_environment_from_ssm(tmp_path, moto_aws):
    script, calls = run_user_data(tmp_path)
    runs = docker_runs(calls)
    assert set(runs) == {"marketplace-migrate", "marketplace"}, f"docker runs: {sorted(runs)}"
    service, migrate = runs["marketplace"]["env"], runs["marketplace-migrate"]["env"]
    token = SECRETS["redis_auth_token_parameter"]
    redis_url = f"rediss://:{token}@{SCRIPT_VALUES['redis_host']}:6379/0"
    expected = {
        "DATABASE_URL": (
            f"mysql://marketplace:{SECRETS['db_password_parameter']}@{SCRIPT_VALUES['db_host']}"
            ":3306/marketplace"
        ),
        "SECRET_KEY": SECRETS["secret_key_parameter"],
        "REDIS_URL": redis_url,
        "RATELIMIT_STORAGE_URI": redis_url,
        "TRUSTED_PROXIES": "10.20.0.0/24,10.20.1.0/24",
        "EMAIL_SOURCE": "notifications@example.com",
        "REGION_NAME": "us-east-1",
        "APP_ENV": "production",
    }
    for env in (service, migrate):
        assert {name: env.get(name) for name in expected} == expected
    assert "STATS_DATABASE_URL" not in service, "no replica, no STATS_DATABASE_URL"

    # The first admin's password reaches the migration (which creates the admin) only.
    assert migrate["ADMIN_EMAIL"] == "admin@example.com"
    assert migrate["ADMIN_PASSWORD"] == SECRETS["admin_password_parameter"]
    assert "ADMIN_PASSWORD" not in service, "the long-running container needs no admin password"
    assert runs["marketplace-migrate"]["args"][-4:] == [
        SCRIPT_VALUES["image"],
        *SCRIPT_VALUES["migrate_command"].split(),
    ], "the migration container runs migrate_command"

    # No secret on any command line (`ps` shows those) nor in the user data itself.
    for secret in SECRETS.values():
        assert secret not in script
        for call in calls:
            assert not any(secret in arg for arg in call["args"]), f"{secret[:6]}... in {call}"
    (login,) = [call for call in calls if call["args"][:1] == ["login"]]
    assert login["stdin"].strip(), "docker login gets the ECR password on stdin"


def test_boot_script_without_a_migration_container(tmp_path, moto_aws):
    _, calls = run_user_data(
        tmp_path, migrate_command="", stats_db_host="replica.abc.us-east-1.rds.amazonaws.com"
    )
    runs = docker_runs(calls)
    assert set(runs) == {"marketplace"}, f"docker runs: {sorted(runs)}"
    service = runs["marketplace"]["env"]
    # The image's entrypoint migrates and creates the first admin, so it gets the password.
    assert service["ADMIN_PASSWORD"] == SECRETS["admin_password_parameter"]
    assert service["STATS_DATABASE_URL"] == (
        f"mysql://marketplace:{SECRETS['db_password_parameter']}"
        "@replica.abc.us-east-1.rds.amazonaws.com:3306/marketplace"
    )
    assert service["REDIS_URL"].startswith("rediss://:")


# --- formatting -----------------------------------------------------------------------


def test_terraform_fmt():
    """`terraform fmt -check -recursive terraform`: the files are as terraform writes them."""
    result = subprocess.run(
        [
            terraform_binary(),
            "fmt",
            "-check",
            "-recursive",
            "-diff",
            "-no-color",
            str(TERRAFORM_DIR),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "TF_CLI_CONFIG_FILE": os.devnull},
    )
    assert result.returncode == 0, (
        "terraform fmt would change these files; run `terraform fmt -recursive terraform`:\n"
        f"{result.stdout}{result.stderr}"
    )
