"""The "stdlib floor": the least a failover client can do, with the standard library only.

    python floor_client.py IFNAME VIP (rtb-... | subnet-...) DESTINATION

MAC from sysfs, IMDSv2 (PUT token, GET macs/<mac>/interface-id, GET the identity document for the
region) on one keep-alive connection, then AssignPrivateIpAddresses(AllowReassignment) in a thread
while the main thread does [DescribeRouteTables when given a subnet id] + ReplaceRoute (CreateRoute
when the route does not exist).  Hand-written SigV4, ``http.client``, ``gc.disable()``,
``os._exit``.  Endpoints and credentials from the usual environment variables
(``AWS_EC2_METADATA_SERVICE_ENDPOINT``, ``AWS_ENDPOINT_URL_EC2``, ``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``).  This is a benchmark reference, not the tool.
"""
import gc

gc.disable()

import hashlib  # noqa: E402
import hmac  # noqa: E402
import http.client  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from urllib.parse import quote, urlsplit  # noqa: E402

VERSION = "2016-11-15"


def _conn(url):
    u = urlsplit(url)
    if u.scheme == "https":
        return http.client.HTTPSConnection(u.hostname, u.port or 443, timeout=5), u.netloc
    return http.client.HTTPConnection(u.hostname, u.port or 80, timeout=5), u.netloc


def _hmac(key, msg):
    return hmac.new(key, msg.encode(), hashlib.sha256).digest()


class EC2:
    def __init__(self, endpoint, region):
        self.endpoint = endpoint
        self.region = region
        self.ak = os.environ["AWS_ACCESS_KEY_ID"]
        self.sk = os.environ["AWS_SECRET_ACCESS_KEY"]
        self.token = os.environ.get("AWS_SESSION_TOKEN")
        self.path = urlsplit(endpoint).path or "/"

    def call(self, conn_host, action, params):
        conn, host = conn_host
        body = "&".join(f"{quote(k, safe='-_.~')}={quote(str(v), safe='-_.~')}"
                        for k, v in [("Action", action), ("Version", VERSION)] + list(params.items()))
        body_b = body.encode()
        now = time.gmtime()
        amzdate = time.strftime("%Y%m%dT%H%M%SZ", now)
        day = amzdate[:8]
        ctype = "application/x-www-form-urlencoded; charset=utf-8"
        hdrs = {"content-type": ctype, "host": host, "x-amz-date": amzdate}
        if self.token:
            hdrs["x-amz-security-token"] = self.token
        signed = ";".join(sorted(hdrs))
        canon_headers = "".join(f"{k}:{hdrs[k]}\n" for k in sorted(hdrs))
        creq = "\n".join(["POST", self.path, "", canon_headers, signed, hashlib.sha256(body_b).hexdigest()])
        scope = f"{day}/{self.region}/ec2/aws4_request"
        sts = "\n".join(["AWS4-HMAC-SHA256", amzdate, scope, hashlib.sha256(creq.encode()).hexdigest()])
        k = _hmac(_hmac(_hmac(_hmac(("AWS4" + self.sk).encode(), day), self.region), "ec2"), "aws4_request")
        sig = hmac.new(k, sts.encode(), hashlib.sha256).hexdigest()
        out = {"Content-Type": ctype, "X-Amz-Date": amzdate,
               "Authorization": f"AWS4-HMAC-SHA256 Credential={self.ak}/{scope}, "
                                f"SignedHeaders={signed}, Signature={sig}"}
        if self.token:
            out["X-Amz-Security-Token"] = self.token
        conn.request("POST", self.path, body=body_b, headers=out)
        r = conn.getresponse()
        data = r.read().decode("utf-8", "replace")
        if r.status != 200:
            m = re.search(r"<Code>(.*?)</Code>", data)
            raise RuntimeError(f"{action}: HTTP {r.status} {m.group(1) if m else data[:200]}")
        return data


def main(argv):
    ifname, vip, where, dest = argv
    with open(f"/sys/class/net/{ifname}/address") as f:
        mac = f.read().strip()
    imds_url = os.environ.get("AWS_EC2_METADATA_SERVICE_ENDPOINT", "http://169.254.169.254/")
    imds, _ = _conn(imds_url)
    imds.request("PUT", "/latest/api/token", headers={"X-aws-ec2-metadata-token-ttl-seconds": "60"})
    r = imds.getresponse()
    token = r.read().decode()
    if r.status != 200:
        raise RuntimeError(f"IMDS token: HTTP {r.status}")

    def md(path):
        imds.request("GET", "/latest/" + path, headers={"X-aws-ec2-metadata-token": token})
        resp = imds.getresponse()
        body = resp.read().decode()
        if resp.status != 200:
            raise RuntimeError(f"IMDS {path}: HTTP {resp.status}")
        return body

    eni = md(f"meta-data/network/interfaces/macs/{mac}/interface-id")
    region = os.environ.get("AWS_REGION") or re.search(
        r'"region"\s*:\s*"([^"]+)"', md("dynamic/instance-identity/document")).group(1)
    vpc = md(f"meta-data/network/interfaces/macs/{mac}/vpc-id") if where.startswith("subnet-") else None
    imds.close()

    ec2 = EC2(os.environ["AWS_ENDPOINT_URL_EC2"] if "AWS_ENDPOINT_URL_EC2" in os.environ
              else f"https://ec2.{region}.amazonaws.com/", region)
    errors = []

    def vip_branch():
        try:
            ec2.call(_conn(ec2.endpoint), "AssignPrivateIpAddresses",
                     {"NetworkInterfaceId": eni, "PrivateIpAddress.1": vip, "AllowReassignment": "true"})
        except Exception as e:  # noqa: BLE001
            errors.append(str(e))

    t = threading.Thread(target=vip_branch)
    t.start()
    try:
        ch = _conn(ec2.endpoint)
        rtb = where
        if where.startswith("subnet-"):
            x = ec2.call(ch, "DescribeRouteTables", {"Filter.1.Name": "association.subnet-id",
                                                     "Filter.1.Value.1": where})
            m = re.search(r"<routeTableId>(rtb-[0-9A-Za-z]+)</routeTableId>", x)
            if not m:
                x = ec2.call(ch, "DescribeRouteTables", {"Filter.1.Name": "vpc-id", "Filter.1.Value.1": vpc,
                                                         "Filter.2.Name": "association.main",
                                                         "Filter.2.Value.1": "true"})
                m = re.search(r"<routeTableId>(rtb-[0-9A-Za-z]+)</routeTableId>", x)
            rtb = m.group(1)
        key = "DestinationIpv6CidrBlock" if ":" in dest else "DestinationCidrBlock"
        p = {"RouteTableId": rtb, key: dest, "NetworkInterfaceId": eni}
        try:
            ec2.call(ch, "ReplaceRoute", p)
        except RuntimeError as e:
            if "InvalidParameterValue" not in str(e):
                raise
            ec2.call(ch, "CreateRoute", p)
    except Exception as e:  # noqa: BLE001
        errors.append(str(e))
    t.join()
    return errors


if __name__ == "__main__":
    rc = 0
    try:
        errs = main(sys.argv[1:])
    except Exception as e:  # noqa: BLE001
        errs = [f"{type(e).__name__}: {e}"]
    for e in errs:
        sys.stderr.write(f"floor: {e}\n")
        rc = 1
    sys.stderr.flush()
    sys.stdout.flush()
    os._exit(rc)
