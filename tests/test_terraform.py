"""The deployment in terraform/ keeps its security rules.

The .tf files are parsed with python-hcl2 (no provider, no network): the database is private
and encrypted, only the app reaches MySQL, only the load balancer is open to the internet,
the instance role grants exactly the allowed actions, no static AWS keys exist, the state
is in S3, the target group checks /readyz, and the files are `terraform fmt`-clean.

None of these tests uses the database fixtures of conftest.py, so each runs once.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from functools import cache
from pathlib import Path

import hcl2
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


def test_secrets_reach_the_instances_only_through_ssm():
    (template,) = resources("aws_launch_template").values()
    user_data = str(template.get("user_data", ""))
    assert "user_data.sh.tftpl" in user_data, "the user data is rendered from the template"
    for leak in ("random_password", ".result", ".value", "password ="):
        assert leak not in user_data, f"the user data is given a secret ({leak!r})"

    script = USER_DATA_TEMPLATE.read_text()
    assert "aws ssm get-parameter" in script and "--with-decryption" in script
    assert "aws ecr get-login-password" in script
    run = re.search(r"docker run -d .*?\"\$IMAGE\"", script, flags=re.S)
    assert run and "-p 80:80" in run.group(0), "the service runs with -p 80:80"
    for name in ("DATABASE_URL", "SECRET_KEY", "EMAIL_SOURCE", "REGION_NAME", "APP_ENV"):
        assert f"-e {name}" in script, f"the container is not given {name}"
    assert "APP_ENV=production" in script
    assert re.search(r"%\{ if stats_db_host != \"\" ~\}.*-e STATS_DATABASE_URL", script, re.S), (
        "STATS_DATABASE_URL is given when (and only when) the read replica exists"
    )
    assert "replica" in user_data and "stats_db_host" in user_data


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


# --- formatting -----------------------------------------------------------------------

ASSIGN = re.compile(r"(?<![=!<>])=(?![=>])")  # `=`, not `==`, `!=`, `<=`, `>=` or `=>`


def mask_line(line: str, stack: list) -> tuple[str, bool]:
    """The line with string contents replaced by "x" (columns kept) and any comment cut,
    and whether it had a comment. `stack` carries the string/interpolation state over to
    the next line."""
    out = []
    i = 0
    while i < len(line):
        char, pair = line[i], line[i : i + 2]
        mode = stack[-1] if stack else "code"
        if mode == "str":
            if char == "\\":
                out.append("xx")
                i += 2
                continue
            if pair in ("${", "%{") and line[i - 1 : i] != pair[0]:
                stack.append(["interp", 1])
                out.append("xx")
                i += 2
                continue
            if char == '"':
                stack.pop()
                out.append('"')
            else:
                out.append("x")
            i += 1
            continue
        if char == "#" or pair == "//":
            return "".join(out).rstrip(), True
        if char == '"':
            stack.append("str")
            out.append('"')
        elif mode != "code":  # inside the ${ ... } of a string
            if char == "{":
                mode[1] += 1
            elif char == "}":
                mode[1] -= 1
                if mode[1] == 0:
                    stack.pop()
            out.append("x")
        else:
            out.append(char)
        i += 1
    return "".join(out).rstrip(), False


def net_brackets(code: str) -> int:
    return sum(code.count(c) for c in "{[(") - sum(code.count(c) for c in "}])")


def fmt_problems(path: Path) -> list[str]:
    """What `terraform fmt` would change in one file, for the rules of hclwrite's format.go
    that need no full HCL parser: a line is indented two spaces per enclosing line that
    opened brackets; the `=` of consecutive one-line attributes line up one space after
    the longest name; one space after `=`; no tabs in the indentation, no trailing blanks
    (comments aside: fmt leaves them alone), one final newline."""
    text = path.read_text()
    problems = []
    if not text.endswith("\n") or text.endswith("\n\n"):
        problems.append(f"{path.name}: must end with exactly one newline")
    indents: list[int] = []  # how many brackets each enclosing line opened
    stack: list = []
    heredoc = None
    chain: list[tuple[int, int, int]] = []  # (line number, name width, `=` column)

    def close_chain():
        if chain:
            widest = max(width for _, width, _ in chain)
            for number, _, column in chain:
                if column != widest + 1:
                    problems.append(f"{path.name}:{number}: `=` not aligned with its neighbours")
            chain.clear()

    for number, line in enumerate(text.splitlines(), 1):
        where = f"{path.name}:{number}"
        if heredoc:
            if line.strip() == heredoc:
                heredoc = None
            continue
        if not line.strip():
            if line:
                problems.append(f"{where}: trailing whitespace")
            close_chain()
            continue
        in_string = bool(stack)
        code, has_comment = mask_line(line, stack)
        comment_only = has_comment and not code.strip()
        if line != line.rstrip() and not has_comment:
            problems.append(f"{where}: trailing whitespace")
        lead = line[: len(line) - len(line.lstrip())]
        if "\t" in lead:
            problems.append(f"{where}: tab")
        marker = re.search(r"<<-?([A-Za-z_]\w*)$", code)
        if marker:
            heredoc = marker.group(1)

        net = 0 if comment_only else net_brackets(code)
        closed = -net
        while closed > 0 and indents:
            if closed >= indents[-1]:
                closed -= indents.pop()
            else:
                indents[-1] -= closed
                closed = 0
        if not in_string and len(lead) != 2 * len(indents):
            problems.append(
                f"{where}: indented {len(lead)}, terraform fmt gives {2 * len(indents)}"
            )
        if net > 0:
            indents.append(net)

        assign = None if comment_only or in_string else ASSIGN.search(code, len(lead) + 1)
        if assign and not re.match(r"= \S", code[assign.start() :]):
            problems.append(f"{where}: one space after `=`")
        if assign and not net_brackets(code[assign.start() :]):
            chain.append((number, len(code[: assign.start()].rstrip()), assign.start()))
        else:
            # A line opening a multi-line value is not aligned: one space before its `=`.
            close_chain()
            if assign and not re.search(r"\S =$", code[: assign.start() + 1]):
                problems.append(f"{where}: one space before `=`")
    close_chain()
    return problems


def test_terraform_fmt():
    """`terraform fmt -check -recursive terraform`, run when terraform is installed.

    Terraform is in neither Debian's archive nor PyPI (only unofficial repackagings), and
    HashiCorp's release site cannot be reached here; this machine's image ships
    /usr/local/bin/terraform. CI sets TERRAFORM_REQUIRED=1 on machines that have it, so a
    lost binary fails the run. Without terraform and without TERRAFORM_REQUIRED the test
    does not skip: it checks the layout rules of `terraform fmt` that need no HCL parser
    (fmt_problems).
    """
    terraform = shutil.which("terraform")
    if terraform:
        result = subprocess.run(
            [terraform, "fmt", "-check", "-recursive", "-diff", str(TERRAFORM_DIR)],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert result.returncode == 0, (
            "terraform fmt would change these files; run `terraform fmt -recursive terraform`:\n"
            f"{result.stdout}{result.stderr}"
        )
        return
    assert os.environ.get("TERRAFORM_REQUIRED", "") in ("", "0"), (
        "terraform is missing: TERRAFORM_REQUIRED is set but no `terraform` is on PATH, so "
        "`terraform fmt -check -recursive terraform` cannot run"
    )
    problems = [p for path in sorted(TERRAFORM_DIR.glob("*.tf")) for p in fmt_problems(path)]
    assert not problems, "terraform fmt would change these files:\n" + "\n".join(problems)
