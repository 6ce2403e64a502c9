#!/bin/bash
# What people run today: a keepalived notify_master script with curl (IMDSv2) and the aws CLI.
#
#   bash_aws.sh IFNAME VIP (rtb-... | subnet-...) DESTINATION
#
# Same failover as floor_client.py: MAC from sysfs, IMDSv2 token + MAC -> ENI + region, then
# AssignPrivateIpAddresses(--allow-reassignment) and ReplaceRoute (create-route if it fails), with
# describe-route-tables first when given a subnet id.  The two branches run one after the other,
# as such scripts usually do; BENCH_PARALLEL=1 runs them as two background jobs instead.
# Uses AWS_EC2_METADATA_SERVICE_ENDPOINT and AWS_ENDPOINT_URL_EC2 when set.
set -euo pipefail

IF=$1 VIP=$2 WHERE=$3 DEST=$4
IMDS=${AWS_EC2_METADATA_SERVICE_ENDPOINT:-http://169.254.169.254/}
IMDS=${IMDS%/}

TOKEN=$(curl -sSf --max-time 2 -X PUT -H "X-aws-ec2-metadata-token-ttl-seconds: 60" "$IMDS/latest/api/token")
md() { curl -sSf --max-time 2 -H "X-aws-ec2-metadata-token: $TOKEN" "$IMDS/latest/$1"; }

MAC=$(cat "/sys/class/net/$IF/address")
ENI=$(md "meta-data/network/interfaces/macs/$MAC/interface-id")
REGION=$(md dynamic/instance-identity/document | sed -n 's/.*"region" *: *"\([^"]*\)".*/\1/p')

AWS=(aws --region "$REGION" --output text)
[ -n "${AWS_ENDPOINT_URL_EC2:-}" ] && AWS+=(--endpoint-url "$AWS_ENDPOINT_URL_EC2")

vip_branch() {
    "${AWS[@]}" ec2 assign-private-ip-addresses --network-interface-id "$ENI" \
        --private-ip-addresses "$VIP" --allow-reassignment >/dev/null
}

route_branch() {
    local rtb=$WHERE
    if [[ $WHERE == subnet-* ]]; then
        rtb=$("${AWS[@]}" ec2 describe-route-tables \
            --filters "Name=association.subnet-id,Values=$WHERE" \
            --query 'RouteTables[0].RouteTableId')
        if [ -z "$rtb" ] || [ "$rtb" = None ]; then
            VPC=$(md "meta-data/network/interfaces/macs/$MAC/vpc-id")
            rtb=$("${AWS[@]}" ec2 describe-route-tables \
                --filters "Name=vpc-id,Values=$VPC" "Name=association.main,Values=true" \
                --query 'RouteTables[0].RouteTableId')
        fi
    fi
    local dflag=--destination-cidr-block
    [[ $DEST == *:* ]] && dflag=--destination-ipv6-cidr-block
    "${AWS[@]}" ec2 replace-route --route-table-id "$rtb" "$dflag" "$DEST" \
        --network-interface-id "$ENI" >/dev/null 2>&1 ||
    "${AWS[@]}" ec2 create-route --route-table-id "$rtb" "$dflag" "$DEST" \
        --network-interface-id "$ENI" >/dev/null
}

if [ "${BENCH_PARALLEL:-0}" = 1 ]; then
    vip_branch & a=$!
    route_branch & b=$!
    rc=0
    wait $a || rc=1
    wait $b || rc=1
    exit $rc
else
    vip_branch
    route_branch
fi
