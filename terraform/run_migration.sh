#!/usr/bin/env bash
# The release's migrations: one ECS task of the image in its `migrate` role (release.tf),
# run by `terraform apply` through terraform_data.migrate. Waits for the task to stop and
# exits 0 only if its container exited 0, so that a failed migration fails the apply
# before any instance is replaced.
#
# Environment (from release.tf): REGION, CLUSTER, TASK_DEFINITION, SUBNETS
# (comma-separated), SECURITY_GROUP.
set -euo pipefail

network="awsvpcConfiguration={subnets=[$SUBNETS],securityGroups=[$SECURITY_GROUP],assignPublicIp=DISABLED}"
task=$(aws ecs run-task --region "$REGION" --cluster "$CLUSTER" \
    --task-definition "$TASK_DEFINITION" --launch-type FARGATE --count 1 \
    --network-configuration "$network" --query 'tasks[0].taskArn' --output text)
if [[ -z $task || $task == None ]]; then
    echo "the migration task did not start" >&2
    exit 1
fi
echo "migration task $task started"

# `aws ecs wait tasks-stopped` gives up after 10 minutes: wait again, up to an hour.
for attempt in 1 2 3 4 5 6; do
    if aws ecs wait tasks-stopped --region "$REGION" --cluster "$CLUSTER" --tasks "$task"; then
        break
    fi
    if ((attempt == 6)); then
        echo "migration task $task still running after an hour" >&2
        exit 1
    fi
    echo "migration task $task still running"
done

read -r code reason < <(aws ecs describe-tasks --region "$REGION" --cluster "$CLUSTER" \
    --tasks "$task" --query 'tasks[0].[containers[0].exitCode, stoppedReason]' --output text)
if [[ $code != 0 ]]; then
    echo "the migration task exited ${code} (${reason}): see its log (stream prefix migrate)" >&2
    exit 1
fi
echo "migrations done"
