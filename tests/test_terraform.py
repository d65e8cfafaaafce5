"""What only a test can say about terraform/ (the text itself is `make lint`'s:
`terraform fmt`): who can reach whom, what each role may do and read, that secrets reach
the instances through SSM only, the boot script rendered by terraform and run by bash
against moto for each role, the release's migration script, variable validation by the
real `terraform`, and the facts that tie the files to the service: the metrics the
instances publish are the service's own and every alarm the operators need exists, the
database is the engine and version the tests run, and TLS to it is required and verified.

The .tf files are parsed with python-hcl2; the real `terraform` runs offline (no
provider, no state). None of these tests uses the database fixtures of conftest.py.
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

ROOT = Path(__file__).resolve().parent.parent
TERRAFORM_DIR = ROOT / "terraform"
USER_DATA_TEMPLATE = TERRAFORM_DIR / "user_data.sh.tftpl"

# What each role may do, and on what: the lists kept in step with terraform/iam.tf and
# release.tf (a grant added there must be added here too, knowingly). Each action maps to
# the pattern every Resource of a statement granting it must match.
ANY = r"\*"  # only for actions that have no resource-level scope
SES_SENDER = r"\$\{aws_sesv2_(email_identity|configuration_set)\.\w+\.arn\}"
ECR_REPOSITORY = r"\$\{aws_ecr_repository\.\w+\.arn\}"
SSM_PARAMETER = r"\$\{aws_ssm_parameter\.\w+(\[\*\])?\.arn\}"
SES_EVENTS_QUEUE = r"\$\{aws_sqs_queue\.ses_events\.arn\}"
SQS_READ = (
    "sqs:ReceiveMessage",
    "sqs:DeleteMessage",
    "sqs:ChangeMessageVisibility",
    "sqs:GetQueueAttributes",
)
LOG_GROUP_STREAMS = r"\$\{aws_cloudwatch_log_group\.\w+\.arn\}:\*"
ECR_PULL = {
    "ecr:GetAuthorizationToken": ANY,
    "ecr:BatchGetImage": ECR_REPOSITORY,
    "ecr:GetDownloadUrlForLayer": ECR_REPOSITORY,
    "ecr:BatchCheckLayerAvailability": ECR_REPOSITORY,
}
LOGS = {"logs:CreateLogStream": LOG_GROUP_STREAMS, "logs:PutLogEvents": LOG_GROUP_STREAMS}
ALLOWED_GRANTS = {
    # the web and worker instances
    "app": {
        "ses:SendEmail": SES_SENDER,
        "ses:SendRawEmail": SES_SENDER,
        "ses:GetSendQuota": ANY,
        **dict.fromkeys(SQS_READ, SES_EVENTS_QUEUE),
        **ECR_PULL,
        "ssm:GetParameter": SSM_PARAMETER,
        "ssm:GetParameters": SSM_PARAMETER,
        **LOGS,
        "cloudwatch:PutMetricData": ANY,
    },
    # ECS starting the release's migration task
    "migrate_execution": {**ECR_PULL, "ssm:GetParameters": SSM_PARAMETER, **LOGS},
}
# Who may assume each role.
TRUSTED_SERVICES = {"app": "ec2.amazonaws.com", "migrate_execution": "ecs-tasks.amazonaws.com"}

CREDENTIAL_ARGUMENTS = frozenset({"access_key", "secret_key", "token"})
OPEN_CIDRS = frozenset({"0.0.0.0/0", "::/0"})
MYSQL_PORT = 3306
REDIS_PORT = 6379

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


# --- IAM policies ---------------------------------------------------------------------


def role_documents() -> dict[str, tuple[str, str]]:
    """role -> (its trust document, its permission document), every one a policy document."""
    roles = {}
    for name, body in resources("aws_iam_role").items():
        trust = ref_name(body.get("assume_role_policy"), "data.aws_iam_policy_document", "json")
        assert trust, f"aws_iam_role.{name}: assume_role_policy must be a policy document"
        assert not body.get("managed_policy_arns") and not nested(body, "inline_policy"), name
        [policy] = [
            b for b in resources("aws_iam_role_policy").values()
            if ref_name(b.get("role"), "aws_iam_role") == name
        ]  # fmt: skip
        permissions = ref_name(policy.get("policy"), "data.aws_iam_policy_document", "json")
        assert permissions, f"aws_iam_role_policy of {name}: write it as a policy document"
        roles[name] = (trust, permissions)
    return roles


def document(name: str) -> dict:
    [body] = [b for _, n, b in blocks("data", "aws_iam_policy_document") if n == name]
    return body


def statements(name: str) -> list[dict]:
    return nested(document(name), "statement")


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


# The two AWS CLI calls the boot script makes, through boto3 (against moto's server).
AWS_CLI = """#!{python}
import base64, json, os, sys
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
elif args[:2] == ["cloudwatch", "put-metric-data"]:
    with open(os.environ["AWS_CALLS"], "a") as calls:
        calls.write(json.dumps(args) + "\\n")
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
            name = SCRIPT_VALUES[key] or f"/marketplace/production/{key[: -len('_parameter')]}"
            ssm.put_parameter(Name=name, Value=secret, Type="SecureString")
        boto3.client("ecr", region_name="us-east-1").create_repository(repositoryName="marketplace")
        yield env
    finally:
        server.stop()


# --- who can reach whom ---------------------------------------------------------------


def test_only_the_instances_reach_the_database_and_redis():
    """The web and worker instances and the migration task share one security group: the
    only one the database (3306) and Redis (6379) admit, and no CIDR block reaches them."""
    app, db, alb = app_group(), db_group(), alb_group()
    [redis] = resources("aws_elasticache_replication_group").values()
    redis_sg = one_group(redis.get("security_group_ids"), "Redis")
    assert len({app, db, alb, redis_sg}) == 4, "each tier its own security group"
    [migration] = resources("terraform_data").values()
    [provisioner] = nested(migration, "provisioner")
    assert provisioner["local-exec"]["environment"]["SECURITY_GROUP"] == (
        f"${{aws_security_group.{app}.id}}"
    )
    for group, port in ((db, MYSQL_PORT), (redis_sg, REDIS_PORT)):
        rules = [rule for rule in ingress_rules() if rule["group"] == group]
        assert rules, f"{group} admits nothing: the service could not connect"
        for rule in rules:
            assert not rule["cidrs"] and not rule["other"], rule["where"]
            assert rule["sources"] == {app}, (rule["where"], rule["sources"])
            assert (literal_port(rule["from"]), literal_port(rule["to"])) == (port, port)
        for rule in ingress_rules():
            if rule["group"] != group and covers_port(rule, port):
                assert not rule["cidrs"], f"{rule['where']} opens {port} to {rule['cidrs']}"


def test_nothing_but_the_load_balancer_is_open_to_the_internet():
    alb, app = alb_group(), app_group()
    rules = ingress_rules()
    open_rules = [rule for rule in rules if rule["cidrs"] & OPEN_CIDRS]
    assert open_rules, "the load balancer must be reachable from the internet"
    for rule in open_rules:
        assert rule["group"] == alb, f"{rule['where']} admits {sorted(rule['cidrs'])}"
        assert (rule["from"], rule["to"]) in {(80, 80), (443, 443)}, rule["where"]
    for rule in rules:
        if rule["cidrs"] - OPEN_CIDRS:
            raise AssertionError(f"{rule['where']} admits CIDR blocks {sorted(rule['cidrs'])}")
        if rule["group"] == app:
            assert rule["sources"] == {alb} and not rule["other"], rule["where"]
            assert (rule["from"], rule["to"]) == (80, 80), f"{rule['where']}: port 80 only"
        assert rule["group"] is not None or not (rule["cidrs"] or rule["sources"]), rule["where"]
    for group in resources("aws_autoscaling_group").values():
        assert group.get("vpc_zone_identifier") == "${aws_subnet.private[*].id}"
    assert resources("aws_subnet")["private"].get("map_public_ip_on_launch") is False
    [template] = resources("aws_launch_template").values()
    assert not nested(template, "network_interfaces")
    [metadata] = nested(template, "metadata_options")
    assert metadata.get("http_tokens") == "required", "IMDSv2 only"


def test_everything_stored_is_encrypted_and_nothing_is_public():
    for name, body in db_instances().items():
        assert body.get("storage_encrypted") is True, f"aws_db_instance.{name}"
        assert body.get("publicly_accessible") is False, f"aws_db_instance.{name}"
    [template] = resources("aws_launch_template").values()
    volumes = [e for m in nested(template, "block_device_mappings") for e in nested(m, "ebs")]
    assert volumes and all(ebs.get("encrypted") is True for ebs in volumes)
    [redis] = resources("aws_elasticache_replication_group").values()
    assert redis.get("at_rest_encryption_enabled") is True
    assert redis.get("transit_encryption_enabled") is True
    assert redis.get("transit_encryption_mode", "required") == "required"
    for name, body in resources("aws_ssm_parameter").items():
        if name != "database_ca":  # public certificates
            assert body.get("type") == "SecureString", f"aws_ssm_parameter.{name}"
    buckets = resources("aws_s3_bucket")
    assert buckets, "the access logs' bucket"
    for name in buckets:
        [blocked] = [
            b for b in resources("aws_s3_bucket_public_access_block").values()
            if b["bucket"] == f"${{aws_s3_bucket.{name}.id}}"
        ]  # fmt: skip
        assert all(blocked[k] is True for k in ("block_public_acls", "block_public_policy",
                   "ignore_public_acls", "restrict_public_buckets")), name  # fmt: skip
        assert any(
            e["bucket"] == f"${{aws_s3_bucket.{name}.id}}"
            for e in resources("aws_s3_bucket_server_side_encryption_configuration").values()
        ), name


def test_no_static_aws_keys():
    sources = [*sorted(TERRAFORM_DIR.glob("*.tf")), USER_DATA_TEMPLATE]
    key_id = re.compile(r"\b(AKIA|ASIA|ABIA|ACCA|AIDA)[A-Z0-9]{16}\b")
    credential_names = re.compile(
        r"aws_access_key_id|aws_secret_access_key|aws_session_token", re.IGNORECASE
    )
    for path in sources:
        text = path.read_text()
        assert not key_id.search(text) and not credential_names.search(text), path.name
    for _, doc in parsed():
        for provider in as_list(doc.get("provider")):
            for body in provider.values():
                for body_ in as_list(body):
                    assert not CREDENTIAL_ARGUMENTS & set(body_)
    assert not resources("aws_iam_access_key") and not resources("aws_iam_user")


# --- what each role may do and read -----------------------------------------------------


def test_each_role_grants_only_its_allowed_actions_on_its_own_resources():
    roles = role_documents()
    assert set(roles) == set(ALLOWED_GRANTS), sorted(roles)
    for role, (trust, permissions) in roles.items():
        [statement] = statements(trust)
        assert statement["actions"] == ["sts:AssumeRole"]
        [principal] = nested(statement, "principals")
        assert principal["identifiers"] == [TRUSTED_SERVICES[role]], role
        allowed, granted = ALLOWED_GRANTS[role], set()
        for statement in statements(permissions):
            assert statement.get("effect", "Allow") == "Allow", (role, statement)
            assert not statement.get("not_actions") and not statement.get("not_resources")
            targets = as_list(statement.get("resources"))
            if isinstance(statement.get("resources"), str):  # concat(...) of parameters
                targets = re.findall(r"aws_ssm_parameter\.\w+(?:\[\*\])?\.arn", targets[0])
                targets = [f"${{{t}}}" for t in targets]
            assert targets, (role, statement)
            for action in statement["actions"]:
                granted.add(action)
                assert action in allowed, f"{role}: {action} is not allowed"
                for target in targets:
                    assert re.fullmatch(allowed[action], target), (role, action, target)
        assert granted == set(allowed), (role, sorted(set(allowed) - granted))
    for type_ in ("aws_iam_role_policy_attachment", "aws_iam_policy_attachment"):
        assert not resources(type_), f"{type_}: no managed policy"


def granted_parameters(role: str) -> set[str]:
    _, permissions = role_documents()[role]
    return {
        name
        for statement in statements(permissions)
        if any(a.startswith("ssm:") for a in statement["actions"])
        for name in re.findall(r"aws_ssm_parameter\.(\w+)", str(statement["resources"]))
    }


def user_data_values() -> dict[str, str]:
    [values] = [b["user_data_values"] for _, doc in parsed()
                for b in as_list(doc.get("locals")) if "user_data_values" in b]  # fmt: skip
    return values


def test_the_instances_read_exactly_the_parameters_they_may_and_no_secret_is_in_user_data():
    read = set()
    for name, expression in user_data_values().items():
        for leak in ("random_password", ".result", ".value", "auth_token", "password"):
            assert leak not in expression, f"the user data is given a secret: {name}"
        read |= set(re.findall(r"aws_ssm_parameter\.(\w+)(?:\[0\])?\.name", expression))
    assert read == granted_parameters("app"), (read, granted_parameters("app"))


def migration_container() -> dict:
    [task] = resources("aws_ecs_task_definition").values()
    text = task["container_definitions"]
    secrets = dict(
        re.findall(r'\{name = "(\w+)", valueFrom = aws_ssm_parameter\.(\w+)\.arn\}', text)
    )
    environment = dict(re.findall(r'\{name = "(\w+)", value = ([^}]+)\}', text))
    command = re.search(r"command = \[(.*?)\]", text).group(1)
    return {"secrets": secrets, "environment": environment, "command": command}


def test_the_migration_task_is_the_migrate_role_and_reads_exactly_what_it_may():
    container = migration_container()
    assert container["command"] == '"migrate"'
    assert set(container["secrets"].values()) == granted_parameters("migrate_execution")
    assert {"DATABASE_URL", "DATABASE_CA_PEM", "SECRET_KEY", "ADMIN_PASSWORD"} <= set(
        container["secrets"]
    )


def test_every_variable_the_containers_are_given_is_one_the_service_reads():
    service = (ROOT / "app" / "core" / "config.py").read_text()
    entrypoint = (ROOT / "docker" / "entrypoint.sh").read_text()
    script = re.sub(r"(?m)^\s*#.*$", "", USER_DATA_TEMPLATE.read_text())
    given = set(re.findall(r"-e (\w+)", script)) | set(migration_container()["secrets"])
    given |= set(migration_container()["environment"])
    assert {"DATABASE_URL", "DATABASE_CA_PEM", "REDIS_URL", "SECRET_KEY"} <= given
    for name in given:
        assert re.search(rf"\b{name}\b", service + entrypoint), f"{name}: nothing reads it"


# --- the database: the engine the tests run, TLS required and verified -------------------


def test_the_database_is_the_mariadb_release_the_tests_run():
    primary = db_instances()["main"]
    assert primary["engine"] == "mariadb"
    default = variable("db_engine_version")["default"]
    tested = re.search(r"(\d+\.\d+)\.\d+-MariaDB", h_run(["/usr/sbin/mariadbd", "--version"]))
    assert tested and tested.group(1) == default, (default, tested)


def h_run(args: list[str]) -> str:
    return subprocess.run(args, capture_output=True, text=True, timeout=30, check=True).stdout


def test_tls_to_the_database_is_required_and_the_service_verifies_it():
    groups = resources("aws_db_parameter_group")
    for name, body in db_instances().items():
        group = ref_name(body.get("parameter_group_name"), "aws_db_parameter_group", "name")
        parameters = {p["name"]: str(p["value"]) for p in nested(groups[group], "parameter")}
        assert parameters.get("require_secure_transport") == "1", name
    # DATABASE_URL's ssl_ca is where the entrypoint writes DATABASE_CA_PEM (the RDS CA).
    [secrets_locals] = [b for _, doc in parsed() for b in as_list(doc.get("locals"))
                        if "database_ca_path" in b]  # fmt: skip
    path = secrets_locals["database_ca_path"]
    assert "?ssl_ca=${local.database_ca_path}" in secrets_locals["database_url"]
    entrypoint = (ROOT / "docker" / "entrypoint.sh").read_text()
    assert path == "/run/marketplace/database-ca.pem"
    assert (
        '"$RUN_DIR/database-ca.pem"' in entrypoint and "/run/marketplace/uwsgi.sock" in entrypoint
    )
    assert resources("aws_ssm_parameter")["database_ca"]["value"] == (
        "${data.http.rds_ca.response_body}"
    )


# --- what the operators are told, and what scales the workers ----------------------------

# Every alarm issue-level operations asked for: (namespace, metric) -> what it watches.
REQUIRED_ALARMS = {
    ("AWS/ApplicationELB", "HTTPCode_Target_5XX_Count"): "the instances' 5xx",
    ("AWS/ApplicationELB", "HTTPCode_ELB_5XX_Count"): "the load balancer's own 5xx",
    ("AWS/ApplicationELB", "UnHealthyHostCount"): "unhealthy targets",
    ("${local.metrics_namespace}", "OutboxOldestPendingSeconds"): "the oldest pending email",
    ("${local.metrics_namespace}", "EmailsUnknown"): "emails whose outcome is unknown",
    ("${local.metrics_namespace}", "ViewsStreamLag"): "the views stream's lag",
    ("AWS/RDS", "CPUUtilization"): "the database's CPU",
    ("AWS/SES", "Reputation.BounceRate"): "SES's bounce rate",
    ("AWS/SES", "Reputation.ComplaintRate"): "SES's complaint rate",
    ("AWS/RDS", "FreeStorageSpace"): "the database's storage",
}


def published_metrics() -> dict[str, str]:
    """CloudWatch metric -> the service's own metric the web instances publish it from."""
    script = USER_DATA_TEMPLATE.read_text()
    return dict(re.findall(r"MetricName=(\w+),Value=\$\(value '?([^)']+)'?\)", script))


def test_every_needed_alarm_exists_and_notifies_the_topic():
    alarms = resources("aws_cloudwatch_metric_alarm")
    found = {(a.get("namespace"), a.get("metric_name")): a for a in alarms.values()}
    for key, what in REQUIRED_ALARMS.items():
        assert key in found, f"no alarm on {what}"
        assert found[key]["alarm_actions"] == "${local.alarm_actions}", key
    assert "${aws_sns_topic.alarms.arn}" in str(
        [
            b["alarm_actions"]
            for _, d in parsed()
            for b in as_list(d.get("locals"))
            if "alarm_actions" in b
        ]
    )


def test_the_published_metrics_are_the_services_own_and_feed_the_alarms_and_scaling():
    published = published_metrics()
    assert set(published) == {
        "OutboxPending", "OutboxOldestPendingSeconds", "EmailsUnknown", "ViewsStreamLag"
    }  # fmt: skip
    source = "".join(p.read_text() for p in (ROOT / "app").rglob("*.py"))
    for metric in published.values():
        assert f'"{metric.split("{")[0]}"' in source, f"the service exports no {metric}"
    used = {
        m["metric_name"]
        for alarm in resources("aws_cloudwatch_metric_alarm").values()
        for query in nested(alarm, "metric_query")
        for m in nested(query, "metric")
        if m.get("namespace") == "${local.metrics_namespace}"
    } | {
        a["metric_name"]
        for a in resources("aws_cloudwatch_metric_alarm").values()
        if a.get("namespace") == "${local.metrics_namespace}"
    }
    assert used <= set(published), used - set(published)
    scaling = {
        ref_name(a["alarm_actions"][0], "aws_autoscaling_policy", "arn")
        for a in resources("aws_cloudwatch_metric_alarm").values()
        if isinstance(a.get("alarm_actions"), list)
    }
    policies = resources("aws_autoscaling_policy")
    assert {n for n in scaling if n} == {"worker_out", "worker_in"}
    for name in ("worker_out", "worker_in"):
        assert policies[name]["autoscaling_group_name"] == "${aws_autoscaling_group.worker.name}"


def test_the_load_balancer_logs_to_a_bucket_it_may_write_and_checks_a_route_of_the_app():
    [alb] = resources("aws_lb").values()
    [logs] = nested(alb, "access_logs")
    assert logs["enabled"] is True and logs["bucket"] == "${aws_s3_bucket.alb_logs.id}"
    [write] = [s for s in statements("alb_logs") if s.get("effect") == "Allow"]
    assert write["actions"] == ["s3:PutObject"]
    assert write["resources"][0].startswith(f"${{aws_s3_bucket.alb_logs.arn}}/{logs['prefix']}/")
    from app import create_app
    from app.core.config import TestConfig

    routes = {rule.rule for rule in create_app(TestConfig("sqlite://")).url_map.iter_rules()}
    for group in resources("aws_lb_target_group").values():
        [check] = nested(group, "health_check")
        assert check["path"] in routes, check["path"]


def test_migrations_run_once_per_release_before_either_group_rolls():
    [migration] = resources("terraform_data").values()
    assert "${var.image_tag}" in migration["triggers_replace"]
    for name, group in resources("aws_autoscaling_group").items():
        assert "${terraform_data.migrate}" in group["depends_on"], name
    # The instances never migrate: each runs its role (the boot script's tests below).
    assert "deploy upgrade" not in USER_DATA_TEMPLATE.read_text()


def test_views_in_redis_survive_a_node_failure_by_default():
    [redis] = resources("aws_elasticache_replication_group").values()
    assert redis["num_cache_clusters"] == "${var.redis_multi_az ? 2 : 1}"
    assert redis["automatic_failover_enabled"] == "${var.redis_multi_az}"
    assert variable("redis_multi_az")["default"] is True
    group = ref_name(redis["parameter_group_name"], "aws_elasticache_parameter_group", "name")
    parameters = {
        p["name"]: p["value"]
        for p in nested(resources("aws_elasticache_parameter_group")[group], "parameter")
    }
    assert parameters["maxmemory-policy"] == "noeviction", "the stream must never be evicted"


def test_trusted_proxies_are_the_load_balancer_subnets():
    [alb] = resources("aws_lb").values()
    subnets = re.fullmatch(r"\$\{aws_subnet\.(\w+)\[\*\]\.id\}", str(alb.get("subnets")))
    [trusted] = [b["trusted_proxies"] for _, doc in parsed()
                 for b in as_list(doc.get("locals")) if "trusted_proxies" in b]  # fmt: skip
    assert trusted == f'${{join(",", aws_subnet.{subnets.group(1)}[*].cidr_block)}}'
    assert user_data_values()["trusted_proxies"] == "${local.trusted_proxies}"


# --- variables, checked by the real terraform --------------------------------------------


def test_variables_refuse_what_cannot_work(tmp_path):
    refused = plan_variables(tmp_path)
    assert refused.returncode != 0 and "certificate_arn must be set" in refused.stderr
    assert "allow_plain_http = true" in refused.stderr, "the error says how to opt out"
    assert plan_variables(tmp_path, certificate_arn=CERTIFICATE).returncode == 0
    assert plan_variables(tmp_path, allow_plain_http=True).returncode == 0
    for values, message in [
        ({"certificate_arn": "my-certificate"}, "ACM certificate ARN"),
        ({"ssl_policy": "ELBSecurityPolicy-2016-08"}, "ssl_policy must be"),
        ({"db_engine_version": "8.4"}, "db_engine_version must be"),
        ({"worker_min_size": 0}, "worker_min_size must be at least 1"),
    ]:
        done = plan_variables(tmp_path, **{"certificate_arn": CERTIFICATE, **values})
        assert done.returncode != 0 and message in done.stderr, (values, done.stderr)


# --- the boot script, rendered by terraform and run against moto -------------------------

SCRIPT_VALUES = {
    "region": "us-east-1",
    "registry": "123456789012.dkr.ecr.us-east-1.amazonaws.com",
    "image": "123456789012.dkr.ecr.us-east-1.amazonaws.com/marketplace:release-1",
    "log_group": "/marketplace/production/app",
    "database_url_parameter": "/marketplace/production/database_url",
    "stats_database_url_parameter": "",
    "database_ca_parameter": "/marketplace/production/database_ca",
    "secret_key_parameter": "/marketplace/production/secret_key",
    "redis_url_parameter": "/marketplace/production/redis_url",
    "trusted_proxies": "10.20.0.0/24,10.20.1.0/24",
    "email_source": "notifications@example.com",
    "metrics_namespace": "Marketplace/marketplace-production",
    "ses_events_queue_url": "https://sqs.us-east-1.amazonaws.com/123456789012/ses-events",
}
SECRETS = {
    "database_url_parameter": "mysql://marketplace:"
    + "D" * 32
    + "@db.example:3306/marketplace?ssl_ca=/run/marketplace/database-ca.pem",
    "database_ca_parameter": "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----",
    "secret_key_parameter": "secret" + "S" * 58,
    "redis_url_parameter": "rediss://:" + "T" * 64 + "@redis.example:6379/0",
    "stats_database_url_parameter": "mysql://marketplace:" + "D" * 32 + "@replica.example/m",
}


def run_user_data(tmp_path: Path, **overrides) -> tuple[str, list[dict]]:
    """Render the boot script and run it with bash: AWS is moto, docker/dnf/systemctl are
    stand-ins on PATH, files go under tmp_path. Returns the script and the docker calls,
    with the environment each got."""
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
    root = tmp_path / "root"  # where the script's absolute paths land
    (root / "usr/local/bin").mkdir(parents=True, exist_ok=True)
    (root / "etc/systemd/system").mkdir(parents=True, exist_ok=True)
    rooted = script.replace(" >/usr/local/bin/", f" >{root}/usr/local/bin/")
    rooted = rooted.replace(" /usr/local/bin/marketplace", f" {root}/usr/local/bin/marketplace")
    rooted = rooted.replace(" >/etc/systemd/", f" >{root}/etc/systemd/")
    (tmp_path / "user_data.sh").write_text(rooted)
    ran = subprocess.run(
        ["bash", str(tmp_path / "user_data.sh")],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "DOCKER_CALLS": str(calls)},
    )
    assert ran.returncode == 0, f"the boot script failed:\n{ran.stdout}\n{ran.stderr}"
    return script, [json.loads(line) for line in calls.read_text().splitlines()]


def docker_runs(calls: list[dict]) -> list[dict]:
    return [call for call in calls if call["args"][:1] == ["run"]]


@pytest.mark.parametrize("role", ["web", "worker"])
def test_each_instance_runs_one_container_in_its_role_with_its_environment_from_ssm(
    tmp_path, moto_aws, role
):
    script, calls = run_user_data(tmp_path, role=role)
    [run] = docker_runs(calls)
    assert run["args"][-2:] == [SCRIPT_VALUES["image"], role]
    assert ("-p" in run["args"]) == (role == "web"), "only the web role serves port 80"
    expected = {
        "DATABASE_URL": SECRETS["database_url_parameter"],
        "DATABASE_CA_PEM": SECRETS["database_ca_parameter"],
        "SECRET_KEY": SECRETS["secret_key_parameter"],
        "REDIS_URL": SECRETS["redis_url_parameter"],
        "TRUSTED_PROXIES": "10.20.0.0/24,10.20.1.0/24",
        "EMAIL_SOURCE": "notifications@example.com",
        "REGION_NAME": "us-east-1",
    }
    assert {name: run["env"].get(name) for name in expected} == expected
    # Only the worker reads SES's events.
    queue = run["env"].get("SES_EVENTS_QUEUE_URL")
    assert queue == (SCRIPT_VALUES["ses_events_queue_url"] if role == "worker" else None)
    assert "STATS_DATABASE_URL" not in run["env"] and "ADMIN_PASSWORD" not in run["env"]
    # No secret on any command line (`ps` shows those) nor in the user data itself.
    for secret in SECRETS.values():
        assert secret not in script
        for call in calls:
            assert not any(secret in arg for arg in call["args"]), call["args"][:3]
    [login] = [call for call in calls if call["args"][:1] == ["login"]]
    assert login["stdin"].strip(), "docker login gets the ECR password on stdin"
    assert ("marketplace-metrics" in script) == (role == "web")


def test_with_a_replica_the_statistics_read_from_it(tmp_path, moto_aws):
    _, calls = run_user_data(
        tmp_path,
        role="worker",
        stats_database_url_parameter="/marketplace/production/stats_database_url",
    )
    [run] = docker_runs(calls)
    assert run["env"]["STATS_DATABASE_URL"] == SECRETS["stats_database_url_parameter"]


EXPOSITION = """# HELP marketplace_notifications Emails in the outbox, by status.
# TYPE marketplace_notifications gauge
marketplace_notifications{status="pending"} 17.0
marketplace_notifications{status="sent"} 400.0
marketplace_notifications{status="unknown"} 2.0
marketplace_notifications_oldest_pending_seconds 93.5
marketplace_views_stream_length 1500.0
marketplace_views_stream_lag 1234.0
"""


def test_the_web_instances_publish_the_outbox_and_stream_gauges_every_minute(tmp_path, moto_aws):
    run_user_data(tmp_path, role="web")
    publisher = tmp_path / "root/usr/local/bin/marketplace-metrics"
    timer = (tmp_path / "root/etc/systemd/system/marketplace-metrics.timer").read_text()
    assert "OnUnitActiveSec=1min" in timer
    curl = tmp_path / "bin" / "curl"
    curl.write_text(f"#!/bin/sh\ncat <<'EOF'\n{EXPOSITION}EOF\n")
    curl.chmod(0o755)
    aws_calls = tmp_path / "aws-calls.jsonl"
    done = subprocess.run(
        ["bash", str(publisher)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}",
             "AWS_CALLS": str(aws_calls)},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    [call] = [json.loads(line) for line in aws_calls.read_text().splitlines()]
    assert call[call.index("--namespace") + 1] == SCRIPT_VALUES["metrics_namespace"]
    data = call[call.index("--metric-data") + 1 :]
    values = {
        re.search(r"MetricName=(\w+)", d).group(1): float(re.search(r"Value=([\d.]+)", d).group(1))
        for d in data
    }
    assert values == {
        "OutboxPending": 17,
        "OutboxOldestPendingSeconds": 93.5,
        "EmailsUnknown": 2,
        "ViewsStreamLag": 1234,
    }


# --- the release's migration ------------------------------------------------------------

ECS_CLI = """#!/bin/sh
echo "$*" >> "$ECS_CALLS"
case "$2" in
run-task) echo arn:aws:ecs:us-east-1:123456789012:task/release/abc ;;
wait) exit 0 ;;
describe-tasks) printf '%s\\tEssential container in task exited\\n' "$EXIT_CODE" ;;
esac
"""


@pytest.mark.parametrize("exit_code", ["0", "1"])
def test_the_release_fails_when_its_migration_does(tmp_path, exit_code):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "aws").write_text(ECS_CLI)
    (bin_dir / "aws").chmod(0o755)
    calls = tmp_path / "calls"
    env = {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "ECS_CALLS": str(calls),
        "EXIT_CODE": exit_code,
        "REGION": "us-east-1",
        "CLUSTER": "marketplace-production-release",
        "TASK_DEFINITION": "arn:aws:ecs:us-east-1:123456789012:task-definition/m:3",
        "SUBNETS": "subnet-a,subnet-b",
        "SECURITY_GROUP": "sg-app",
    }
    done = subprocess.run(
        [str(TERRAFORM_DIR / "run_migration.sh")], env=env, capture_output=True, text=True
    )
    assert done.returncode == int(exit_code), done.stdout + done.stderr
    [run, *_] = calls.read_text().splitlines()
    assert "subnets=[subnet-a,subnet-b],securityGroups=[sg-app],assignPublicIp=DISABLED" in run
