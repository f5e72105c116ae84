"""What the rendered manifests must say, beyond schema validity.

Usage: deploy_checks.py SIDECAR.yaml GATEWAY.yaml IAM_POLICY.json
"""

import json
import re
import sys

import yaml


def docs(path):
    with open(path) as f:
        return {(d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(f) if d}


def seconds(duration: str) -> int:
    m = re.fullmatch(r"(\d+)s", duration)
    assert m, f"grace {duration!r} is not whole seconds"
    return int(m.group(1))


def env(container):
    return {e["name"]: e.get("value") for e in container.get("env", [])}


def check_hardened(container):
    sc = container["securityContext"]
    assert sc["runAsNonRoot"] and sc["readOnlyRootFilesystem"], container["name"]
    assert sc["allowPrivilegeEscalation"] is False, container["name"]
    assert sc["capabilities"]["drop"] == ["ALL"], container["name"]
    assert "limits" in container["resources"] and "requests" in container["resources"], container["name"]


def check_pod(pod, sidecar):
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    grace = seconds(env(sidecar)["KVS_SIDECAR_SHUTDOWN_GRACE"])
    assert pod["terminationGracePeriodSeconds"] > grace, "kubelet would kill the sidecar mid-drain"
    for probe in ("readinessProbe", "livenessProbe"):
        assert sidecar[probe]["grpc"]["port"] == 9901, probe
    check_hardened(sidecar)


def main(sidecar_yaml, gateway_yaml, policy_json):
    sidecar = docs(sidecar_yaml)
    pod = sidecar[("Deployment", "recorder")]["spec"]["template"]["spec"]
    (native,) = [c for c in pod["initContainers"] if c["name"] == "kvs-sidecar"]
    assert native["restartPolicy"] == "Always", "a native sidecar"
    assert env(native)["KVS_SIDECAR_GRPC_LISTEN"].startswith("127.0.0.1:"), "gRPC stays on loopback"
    check_pod(pod, native)
    assert ("PodMonitor", "kvs-sidecar") in sidecar and ("NetworkPolicy", "recorder-kvs-sidecar") in sidecar

    gateway = docs(gateway_yaml)
    pod = gateway[("Deployment", "kvs-gateway")]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    settings = env(container)
    assert settings["KVS_SIDECAR_TLS_CLIENT_CA"] and settings["KVS_SIDECAR_TLS_CERT"], "mutual TLS is on"
    assert settings["KVS_SIDECAR_ALLOWED_CHANNELS"], "the channel allow-list is on"
    check_pod(pod, container)
    for kind in ("Service", "HorizontalPodAutoscaler", "PodDisruptionBudget", "NetworkPolicy", "ServiceMonitor"):
        assert (kind, "kvs-gateway") in gateway, kind
    for manifests in (sidecar, gateway):
        sa = manifests[("ServiceAccount", "kvs-sidecar")]
        assert sa["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].startswith("arn:aws:iam::")

    with open(policy_json) as f:
        statements = {s["Sid"]: s for s in json.load(f)["Statement"]}
    channels = statements.pop("JoinWebRtcStorageSessions")
    streams = statements.pop("ReadLinkedStreams")
    roles = statements.pop("AssumeMappedRoles")
    playback = statements.pop("PlayBackRecordings")
    # EnsureStorage's writes, in their own statement that a deployment
    # without --allow-storage-changes leaves out.
    optional = statements.pop("OptionalEnsureStorageWritesOnlyWithAllowStorageChanges")
    assert not statements, f"unexpected statements {sorted(statements)}"
    assert sorted(channels["Action"]) == [
        "kinesisvideo:ConnectAsMaster",
        "kinesisvideo:ConnectAsViewer",
        "kinesisvideo:DescribeMediaStorageConfiguration",
        "kinesisvideo:DescribeSignalingChannel",
        "kinesisvideo:GetIceServerConfig",
        "kinesisvideo:GetSignalingChannelEndpoint",
        "kinesisvideo:JoinStorageSession",
        "kinesisvideo:JoinStorageSessionAsViewer",
    ], channels["Action"]
    assert channels["Resource"].startswith("arn:aws:kinesisvideo:") and ":channel/" in channels["Resource"]
    # CheckStorageReadiness describes the stream linked to the channel; the
    # recording status lists its fragments on its LIST_FRAGMENTS endpoint.
    assert sorted(streams["Action"]) == [
        "kinesisvideo:DescribeStream",
        "kinesisvideo:GetDataEndpoint",
        "kinesisvideo:ListFragments",
    ], streams["Action"]
    assert streams["Resource"].startswith("arn:aws:kinesisvideo:") and ":stream/" in streams["Resource"]
    # --assume-role: exactly the mapped roles, never "*".
    assert roles["Action"] == ["sts:AssumeRole"], roles["Action"]
    assert roles["Resource"] and all(":role/" in r for r in roles["Resource"]), roles["Resource"]
    # GetPlaybackUrl: the stream's data endpoint and the two session URLs.
    assert sorted(playback["Action"]) == [
        "kinesisvideo:GetDASHStreamingSessionURL",
        "kinesisvideo:GetDataEndpoint",
        "kinesisvideo:GetHLSStreamingSessionURL",
    ], playback["Action"]
    assert ":stream/" in playback["Resource"], playback["Resource"]
    assert sorted(optional["Action"]) == [
        "kinesisvideo:CreateStream",
        "kinesisvideo:DescribeMappedResourceConfiguration",
        "kinesisvideo:UpdateDataRetention",
        "kinesisvideo:UpdateMediaStorageConfiguration",
    ], optional["Action"]
    # No write sneaks into the statements every deployment needs.
    for needed in (channels, streams, playback, roles):
        assert not set(needed["Action"]) & set(optional["Action"]), needed["Sid"]
    print("deploy checks: ok")


if __name__ == "__main__":
    main(*sys.argv[1:])
