#!/usr/bin/env bash
# Once per AWS account and region, on YOUR machine, before the first `ray up ray_cluster.yaml` (needs the aws
# CLI and the right to make IAM roles and security groups): what the cluster file's least-privilege settings
# name, made from its variables (region, ssh_from, security_group, the bucket of PCLC_STORAGE).
#   1. the security group, in the default VPC: port 22 from ssh_from only, all traffic among its members.
#      Ray adds its defaults (port 22 from 0.0.0.0/0 among them) only to a group without rules, so it adds
#      none to this one; a world-open port 22 found on it (a group Ray made first) is removed.
#   2. the role and instance profile pclc-worker: S3 on that bucket only (cluster/aws/worker_policy.json), and
#      nothing else: no EC2, no IAM.
#   3. the head's, pclc-head: EC2 (Ray's autoscaler starts and stops the workers), S3 on the same bucket only
#      (the MLflow server's artifacts), and handing pclc-worker to the workers (iam:PassRole on it alone).
#      `ray up` cannot start the head before this script ran: the file names this profile (fail closed).
# Idempotent: run it again after changing ssh_from or the bucket.
#
#   bash cluster/aws_setup.sh [ray_cluster.yaml]
set -euo pipefail

CONFIG=${1:-ray_cluster.yaml}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
settings=$(
    python3 - "$CONFIG" <<'EOF'
"""region ssh_from group bucket, read from the cluster file's variables."""
import ipaddress, re, sys, yaml

cfg = yaml.safe_load(open(sys.argv[1]))
meta = cfg["metadata"]["pclc"]
storage = re.search(r"PCLC_STORAGE=s3://([^/\s]+)", meta["setup_node"])
if not storage:
    sys.exit(f"aws_setup: PCLC_STORAGE in {sys.argv[1]}'s setup_node is not an s3://BUCKET/... URI")
other = {b for b in re.findall(r"=s3://([^/\s]+)", meta["setup_node"]) if b != storage[1]}
if other:
    sys.exit(f"aws_setup: the roles reach one bucket, {storage[1]} (PCLC_STORAGE); the file also names {other}")
net = ipaddress.ip_network(meta["ssh_from"], strict=False)
if net.prefixlen < 24 or net.subnet_of(ipaddress.ip_network("203.0.113.0/24")):
    sys.exit(f"aws_setup: ssh_from = {meta['ssh_from']}: set your own address (a /32) at the top of {sys.argv[1]}")
print(cfg["provider"]["region"], net, meta["security_group"], storage[1])
EOF
)
read -r REGION SSH_FROM GROUP BUCKET <<<"$settings"
aws() { command aws --region "$REGION" --output text "$@"; }

# ---- 1. the security group
VPC=$(aws ec2 describe-vpcs --filters Name=isDefault,Values=true --query 'Vpcs[0].VpcId')
SG=$(aws ec2 describe-security-groups --filters "Name=group-name,Values=$GROUP" "Name=vpc-id,Values=$VPC" \
    --query 'SecurityGroups[0].GroupId')
if [ "$SG" = None ]; then
    SG=$(aws ec2 create-security-group --group-name "$GROUP" --vpc-id "$VPC" --query GroupId \
        --description "pclc sweeps: SSH from one address, the nodes to each other")
fi
allow() { # one ingress rule; one that is already there is fine
    local out
    if ! out=$(aws ec2 authorize-security-group-ingress --group-id "$SG" "$@" 2>&1); then
        case "$out" in *InvalidPermission.Duplicate*) ;; *) echo "$out" >&2 && exit 1 ;; esac
    fi
}
allow --protocol tcp --port 22 --cidr "$SSH_FROM"
allow --ip-permissions "IpProtocol=-1,UserIdGroupPairs=[{GroupId=$SG}]"
# Ray's default world-open SSH, if Ray made this group before this script ran (absent: nothing to revoke)
aws ec2 revoke-security-group-ingress --group-id "$SG" --protocol tcp --port 22 --cidr 0.0.0.0/0 >/dev/null 2>&1 || true
aws ec2 revoke-security-group-ingress --group-id "$SG" \
    --ip-permissions 'IpProtocol=tcp,FromPort=22,ToPort=22,Ipv6Ranges=[{CidrIpv6=::/0}]' >/dev/null 2>&1 || true

# ---- 2. the workers' role: the bucket and nothing else; the head may pass it on
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
role() { # a role and instance profile of one name, trusted by EC2
    command aws iam get-role --role-name "$1" >/dev/null 2>&1 ||
        command aws iam create-role --role-name "$1" --assume-role-policy-document "file://$HERE/aws/trust_ec2.json" >/dev/null
    if ! command aws iam get-instance-profile --instance-profile-name "$1" >/dev/null 2>&1; then
        command aws iam create-instance-profile --instance-profile-name "$1" >/dev/null
        command aws iam add-role-to-instance-profile --instance-profile-name "$1" --role-name "$1"
    fi
}
role pclc-worker
sed "s/BUCKET/$BUCKET/g" "$HERE/aws/worker_policy.json" >"$TMP/worker.json"
command aws iam put-role-policy --role-name pclc-worker --policy-name pclc-sweep-bucket \
    --policy-document "file://$TMP/worker.json"
# ---- 3. the head's role: EC2 for the autoscaler, the same bucket, and pclc-worker to pass on
role pclc-head
command aws iam attach-role-policy --role-name pclc-head --policy-arn arn:aws:iam::aws:policy/AmazonEC2FullAccess
command aws iam put-role-policy --role-name pclc-head --policy-name pclc-sweep-bucket \
    --policy-document "file://$TMP/worker.json"
WORKER_ROLE=$(command aws iam get-role --role-name pclc-worker --query Role.Arn --output text)
printf '{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "iam:PassRole", "Resource": "%s"}]}\n' \
    "$WORKER_ROLE" >"$TMP/pass.json"
command aws iam put-role-policy --role-name pclc-head --policy-name pclc-pass-worker-role \
    --policy-document "file://$TMP/pass.json"

PROFILE=$(command aws iam get-instance-profile --instance-profile-name pclc-worker --query InstanceProfile.Arn --output text)
echo "aws_setup: security group $GROUP ($SG): SSH from $SSH_FROM only; worker profile $PROFILE: s3://$BUCKET only"
echo "aws_setup: head_iam_profile and worker_iam_profile in $CONFIG must name ${PROFILE%pclc-worker}pclc-head and $PROFILE"
