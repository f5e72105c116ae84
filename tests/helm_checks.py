"""Offline checks of the Helm chart deploy/helm/kvs-sidecar.

With Helm's own Go SDK (v4, the helm-python-sdk package; no helm binary, no
cluster): `helm lint --strict` at Kubernetes 1.29 and at the newest version
kubernetes-validate knows; renders (defaults, everything on, gateway off,
other ports) validated with `kubernetes-validate --strict` at both versions
and the ServiceMonitor with tests/node/validate-crds.mjs; what a schema
cannot say (restartPolicy only on init containers, ports, probes, Service,
NetworkPolicy and listen addresses agree, selectors select the pods, the
state-store URL reaches the container, the drain fits the grace period);
values.schema.json; parity of the gateway with `kubectl kustomize
deploy/overlays/gateway`; and tests/fixtures/helm-consumer, a chart that
vendors this one under charts/ and includes kvs-sidecar.nativeSidecar.

Usage: helm_checks.py [CHART_DIR]   (default deploy/helm/kvs-sidecar; another
directory, e.g. a broken copy, to see the checks fail). Run from the
repository's root with the project's .venv, which scripts/check-deploy does;
HELM_CHECKS_VERBOSE=1 lists what passed.
"""

import copy
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib

import helm_python as helm
import kubernetes_validate
import yaml

OLDEST = "1.29.0"  # native sidecars are on by default from 1.29
NEWEST = kubernetes_validate.latest_version()
CHART_NAME = "kvs-sidecar"
CONSUMER = "tests/fixtures/helm-consumer"
VENV_BIN = os.path.dirname(sys.executable)

# Every optional object on, and every setting that changes the pod.
EVERYTHING = {
    "autoscaling": {"enabled": True},
    "podDisruptionBudget": {"enabled": True},
    "networkPolicy": {"enabled": True},
    "serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}, "scrapeTimeout": "10s"},
    "serviceAccount": {"annotations": {"eks.amazonaws.com/role-arn": "arn:aws:iam::123456789012:role/kvs"}},
    "imagePullSecrets": [{"name": "regcred"}],
    "tls": {"secretName": "kvs-gateway-tls", "mutual": True},
    "stateStore": {"url": "redis://kvs-state.kvs.svc.cluster.local:6379/0"},
    "allowedChannels": ["arn:aws:kinesisvideo:*:123456789012:channel/recorder-*/*"],
    "args": ["--max-attempts", "4"],
    "env": [{"name": "KVS_SIDECAR_LOG_LEVEL", "value": "debug"}],
    "podAnnotations": {"example.com/note": "x"},
    "podLabels": {"team": "media"},
    "nodeSelector": {"kubernetes.io/os": "linux"},
    "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "media", "effect": "NoSchedule"}],
    "affinity": {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [
                    {"matchExpressions": [{"key": "kubernetes.io/arch", "operator": "In", "values": ["arm64", "amd64"]}]}
                ]
            }
        }
    },
    "priorityClassName": "media-critical",
    "terminationGracePeriodSeconds": 45,
    "shutdownGrace": "35s",
}


class Checks:
    """Counts what passed, for the summary line."""

    def __init__(self):
        self.passed = []

    def ok(self, what):
        self.passed.append(what)


def objects(manifests):
    """The objects of a render ({template path: text}), NOTES.txt aside.
    None has a null or empty field: a value a template referred to that is
    not there renders as nothing, which lint and schemas let through."""
    out = []
    for path, text in sorted(manifests.items()):
        if path.endswith("NOTES.txt"):
            continue
        for d in yaml.safe_load_all(text):
            if d:
                no_empty_fields(d, f"{path}: {d['kind']}")
                out.append(d)
    return out


def no_empty_fields(node, where):
    if isinstance(node, dict):
        for key, value in node.items():
            assert value is not None and value != "", f"{where}: {key} is empty"
            no_empty_fields(value, f"{where}.{key}")
    elif isinstance(node, list):
        for item in node:
            no_empty_fields(item, where)


def by_kind(objs):
    index = {}
    for o in objs:
        index.setdefault(o["kind"], []).append(o)
    return index


def one(objs, kind):
    found = [o for o in objs if o["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def env(container):
    return {e["name"]: e.get("value") for e in container.get("env", [])}


def port_of(address):
    return int(address.rsplit(":", 1)[1])


def lint_clean(path, values=None, kube=OLDEST):
    report = helm.lint(path, values, strict=True, kube_version=kube)
    problems = [m for m in report["messages"] if m["severity"] >= 2] + report["errors"]
    assert not problems, f"helm lint --strict {path} at {kube}: {problems}"


def validate(files, checks, what):
    """kubernetes-validate --strict at both versions; a kind it has no schema
    for is only a warning there, so only Prometheus Operator kinds (left to
    validate-crds.mjs) may be warned about."""
    cmd = [os.path.join(VENV_BIN, "kubernetes-validate"), "--strict", "--quiet", "-k", OLDEST, "-k", NEWEST, *files]
    run = subprocess.run(cmd, capture_output=True, text=True)
    output = run.stdout + run.stderr
    assert run.returncode == 0, f"kubernetes-validate {what}:\n{output}"
    for line in output.splitlines():
        assert line.startswith("WARN") and "monitoring.coreos.com/" in line, f"kubernetes-validate {what}: {line}"
    checks.ok(f"kubernetes-validate {what}")


def check_hardened(container, where):
    sc = container["securityContext"]
    assert sc["runAsNonRoot"] is True and sc["readOnlyRootFilesystem"] is True, where
    assert sc["allowPrivilegeEscalation"] is False, where
    assert sc["capabilities"]["drop"] == ["ALL"], where
    assert sc["runAsUser"] != 0, where
    res = container["resources"]
    assert res["requests"]["cpu"] and res["requests"]["memory"] and res["limits"]["memory"], where


def check_restart_policies(objs, where):
    """restartPolicy: Always belongs on init containers only (native
    sidecars); on a regular container the API server rejects it."""
    for o in objs:
        pod = pod_spec(o)
        if pod is None:
            continue
        for c in pod["containers"]:
            assert "restartPolicy" not in c, f"{where}: restartPolicy on container {c['name']}"
        for c in pod.get("initContainers", []):
            assert c.get("restartPolicy") in (None, "Always"), f"{where}: init container {c['name']}"


def pod_spec(o):
    if o["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
        return o["spec"]["template"]["spec"]
    return None


def selects(selector, labels):
    return selector and all(labels.get(k) == v for k, v in selector.items())


def check_gateway(objs, values, where):
    """What a schema cannot say about the gateway's objects."""
    kinds = by_kind(objs)
    deploy = one(objs, "Deployment")
    pod = deploy["spec"]["template"]["spec"]
    labels = deploy["spec"]["template"]["metadata"]["labels"]
    assert selects(deploy["spec"]["selector"]["matchLabels"], labels), f"{where}: Deployment selector"
    (c,) = pod["containers"]
    assert not pod.get("initContainers"), f"{where}: the gateway has no init containers"
    check_restart_policies(objs, where)
    check_hardened(c, where)
    assert pod["securityContext"]["runAsNonRoot"] is True, where
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", where

    # Ports: listen addresses, container ports, probes, Service,
    # NetworkPolicy and ServiceMonitor agree.
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert set(ports) == {"grpc", "admin"}, f"{where}: {ports}"
    settings = env(c)
    assert port_of(settings["KVS_SIDECAR_GRPC_LISTEN"]) == ports["grpc"], f"{where}: gRPC listen vs port"
    assert port_of(settings["KVS_SIDECAR_ADMIN_LISTEN"]) == ports["admin"], f"{where}: admin listen vs port"
    assert settings["KVS_SIDECAR_GRPC_LISTEN"].startswith("0.0.0.0:"), f"{where}: a gateway serves the pod IP"
    for probe in ("readinessProbe", "livenessProbe"):
        assert c[probe]["grpc"]["port"] == ports["admin"], f"{where}: {probe} is not on the admin port"
    svc = one(objs, "Service")
    assert selects(svc["spec"]["selector"], labels), f"{where}: the Service selects no gateway pod"
    svc_ports = {p["name"]: p for p in svc["spec"]["ports"]}
    assert set(svc_ports) == {"grpc", "admin"}, f"{where}: Service ports {svc_ports}"
    for name, p in svc_ports.items():
        assert p["targetPort"] in ports, f"{where}: Service port {name} targets {p['targetPort']}"
        assert p["port"] == ports[p["targetPort"]], f"{where}: Service port {name} != container port"
    for np in kinds.get("NetworkPolicy", []):
        assert selects(np["spec"]["podSelector"]["matchLabels"], labels), f"{where}: NetworkPolicy selects no pod"
        allowed = sorted(p["port"] for rule in np["spec"]["ingress"] for p in rule["ports"])
        assert allowed == sorted(ports.values()), f"{where}: NetworkPolicy ports {allowed} vs {ports}"
    for sm in kinds.get("ServiceMonitor", []):
        assert selects(sm["spec"]["selector"]["matchLabels"], svc["metadata"]["labels"]), f"{where}: ServiceMonitor"
        assert [e["port"] for e in sm["spec"]["endpoints"]] == ["admin"], f"{where}: ServiceMonitor port"
    for pdb in kinds.get("PodDisruptionBudget", []):
        assert selects(pdb["spec"]["selector"]["matchLabels"], labels), f"{where}: PDB selects no pod"
    for hpa in kinds.get("HorizontalPodAutoscaler", []):
        assert hpa["spec"]["scaleTargetRef"]["name"] == deploy["metadata"]["name"], f"{where}: HPA target"
        assert "replicas" not in deploy["spec"], f"{where}: the HPA owns replicas"

    # The service account the pod runs as is the one rendered.
    sa = one(objs, "ServiceAccount")
    assert pod["serviceAccountName"] == sa["metadata"]["name"], f"{where}: serviceAccountName"
    assert sa["automountServiceAccountToken"] is False, where

    # Settings reach the container.
    url = values.get("stateStore", {}).get("url") or None
    assert settings.get("KVS_SIDECAR_STATE_STORE") == url, f"{where}: state store {settings.get('KVS_SIDECAR_STATE_STORE')!r}"
    channels = values.get("allowedChannels")
    assert settings.get("KVS_SIDECAR_ALLOWED_CHANNELS") == (",".join(channels) if channels else None), where
    assert c.get("args") == (values.get("args") or None), f"{where}: args"
    secret = values.get("tls", {}).get("secretName")
    if secret:
        (volume,) = pod["volumes"]
        assert volume["secret"]["secretName"] == secret, where
        (mount,) = c["volumeMounts"]
        assert mount["name"] == volume["name"] and mount["readOnly"] is True, where
        for var in ("KVS_SIDECAR_TLS_CERT", "KVS_SIDECAR_TLS_KEY"):
            assert settings[var].startswith(mount["mountPath"] + "/"), f"{where}: {var}"
        if values["tls"]["mutual"]:
            assert settings["KVS_SIDECAR_TLS_CLIENT_CA"] == mount["mountPath"] + "/ca.crt", f"{where}: client CA"
        else:
            assert "KVS_SIDECAR_TLS_CLIENT_CA" not in settings, f"{where}: mutual TLS is off"
        assert "appProtocol" not in svc_ports["grpc"], f"{where}: TLS is not h2c"
    else:
        assert not any(k.startswith("KVS_SIDECAR_TLS_") for k in settings), where
        assert svc_ports["grpc"]["appProtocol"] == "kubernetes.io/h2c", where
    grace = int(re.fullmatch(r"(\d+)s", settings["KVS_SIDECAR_SHUTDOWN_GRACE"]).group(1))
    assert pod["terminationGracePeriodSeconds"] > grace, f"{where}: kubelet would kill the gateway mid-drain"


def render(chart, values=None, name="kvs-sidecar", namespace="kvs"):
    return objects(chart.render(values, name=name, namespace=namespace))


def write(directory, name, objs):
    path = os.path.join(directory, name)
    with open(path, "w") as f:
        yaml.safe_dump_all(objs, f, sort_keys=False)
    return path


def check_metadata(chart_dir, chart, checks):
    with open("Cargo.toml", "rb") as f:
        crate = tomllib.load(f)["package"]["version"]
    meta = chart.metadata
    assert meta["apiVersion"] == "v2" and meta["name"] == CHART_NAME, meta
    assert meta["version"] == crate and meta["appVersion"] == crate, (
        f"Chart.yaml version {meta['version']} / appVersion {meta['appVersion']} != crate {crate}"
    )
    deploy = one(render(chart), "Deployment")
    assert deploy["spec"]["template"]["spec"]["containers"][0]["image"].endswith(f":{crate}"), "image tag"
    with open("docs/helm.md") as f:
        docs = f.read()
    table = docs.split("\n## Values\n", 1)[1].split("\n## ", 1)[0]
    first_column = [line.split("|")[1] for line in table.splitlines() if line.startswith("| `")]
    documented = {name.split(".")[0] for cell in first_column for name in re.findall(r"`([^`]+)`", cell)}
    missing = [key for key in chart.values if key not in documented]
    assert not missing, f"docs/helm.md's values table lacks {missing}"
    checks.ok("Chart.yaml version = appVersion = crate version; docs/helm.md lists every value")


def check_lint(chart_dir, tmp, checks):
    for kube in (OLDEST, NEWEST):
        for values in (None, EVERYTHING, {"gateway": {"enabled": False}}):
            lint_clean(chart_dir, values, kube)
    # The linter does use the version: a copy whose PodDisruptionBudget is
    # policy/v1beta1 (gone in 1.25) passes at 1.20 and fails at OLDEST.
    old_api = os.path.join(tmp, "old-api")
    shutil.copytree(chart_dir, old_api)
    pdb = os.path.join(old_api, "templates", "pdb.yaml")
    with open(pdb) as f:
        text = f.read()
    with open(pdb, "w") as f:
        f.write(text.replace("apiVersion: policy/v1\n", "apiVersion: policy/v1beta1\n"))
    lint_clean(old_api, None, "1.20.0")
    try:
        lint_clean(old_api, None, OLDEST)
        raise AssertionError(f"helm lint at {OLDEST} accepted policy/v1beta1")
    except AssertionError as e:
        assert "policy/v1beta1" in str(e), e
    checks.ok(f"helm lint --strict at {OLDEST} and {NEWEST} (defaults, everything on, gateway off)")


def check_schema(chart, checks):
    chart.validate_schema(chart.values)
    chart.validate_schema(EVERYTHING)
    bad = {
        "a wrong type": {"replicaCount": "2"},
        "a wrong nested type": {"image": {"tag": 1}},
        "an unknown top-level key": {"replicas": 3},
        "an unknown nested key": {"tls": {"secret": "x"}},
        "a state store that is not Redis": {"stateStore": {"url": "http://redis:6379"}},
        "a grace that is not whole seconds": {"shutdownGrace": "1m"},
    }
    for what, values in bad.items():
        for attempt in (lambda: chart.validate_schema(values), lambda: chart.render(values, name="x")):
            try:
                attempt()
            except helm.HelmValuesError:
                continue
            raise AssertionError(f"values.schema.json accepted {what}: {values}")
    # A global section is what Helm passes to every subchart: allowed.
    chart.validate_schema({"global": {"imageRegistry": "example.com"}})
    # The drain must fit in the grace period.
    try:
        chart.render({"terminationGracePeriodSeconds": 20, "shutdownGrace": "20s"}, name="x")
        raise AssertionError("rendered a grace period no longer than the drain")
    except helm.HelmRenderError:
        pass
    checks.ok("schema accepts the defaults, rejects wrong types, unknown keys (top level and nested)")


def check_renders(chart, tmp, checks):
    renders = {
        "defaults": ({}, {"Deployment", "Service", "ServiceAccount", "PodDisruptionBudget", "NetworkPolicy"}),
        "everything": (
            EVERYTHING,
            {
                "Deployment",
                "Service",
                "ServiceAccount",
                "PodDisruptionBudget",
                "NetworkPolicy",
                "HorizontalPodAutoscaler",
                "ServiceMonitor",
            },
        ),
        "other-ports": (
            {"ports": {"grpc": 6000, "admin": 7000}, "tls": {"secretName": "t", "mutual": False}},
            {"Deployment", "Service", "ServiceAccount", "PodDisruptionBudget", "NetworkPolicy"},
        ),
    }
    files = []
    for what, (values, kinds) in renders.items():
        objs = render(chart, values)
        assert {o["kind"] for o in objs} == kinds, f"{what}: {sorted(o['kind'] for o in objs)}"
        check_gateway(objs, chart.merge_values(values), what)
        files.append(write(tmp, f"helm-{what}.yaml", objs))
    ports = one(render(chart, renders["other-ports"][0]), "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert {p["containerPort"] for p in ports["ports"]} == {6000, 7000}, "ports.* not applied"
    # Only the ServiceAccount goes, with create: false.
    objs = render(chart, {"serviceAccount": {"create": False, "name": "shared"}})
    assert "ServiceAccount" not in {o["kind"] for o in objs}
    assert one(objs, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"] == "shared"
    # gateway.enabled: false renders no object at all.
    for values in ({"gateway": {"enabled": False}}, dict(EVERYTHING, gateway={"enabled": False})):
        objs = render(chart, values)
        assert objs == [], f"gateway off rendered {[o['kind'] for o in objs]}"
    # NOTES.txt tells how to call the Service.
    for values, flag in (({}, "-plaintext "), (EVERYTHING, "-cacert ca.crt -cert client.crt -key client.key ")):
        notes = chart.render(values, name="kvs", namespace="media")[f"{CHART_NAME}/templates/NOTES.txt"]
        svc = one(render(chart, values, name="kvs", namespace="media"), "Service")
        address = f"{svc['metadata']['name']}.media.svc:{svc['spec']['ports'][0]['port']}"
        assert f"grpcurl {flag}{address} list" in notes, f"NOTES.txt:\n{notes}"
        port = svc["spec"]["ports"][0]["port"]
        assert f"port-forward service/{svc['metadata']['name']} {port}:{port}" in notes, f"NOTES.txt:\n{notes}"
    notes = chart.render({"gateway": {"enabled": False}})[f"{CHART_NAME}/templates/NOTES.txt"]
    assert 'include "kvs-sidecar.nativeSidecar"' in notes, notes
    checks.ok("renders: defaults, everything on, other ports, no service account; gateway off renders 0 objects; NOTES.txt")
    checks.ok("ports/probes/Service/NetworkPolicy/ServiceMonitor agree; selectors select the pods; settings reach the container")
    validate(files, checks, f"--strict of {len(files)} renders at {OLDEST} and {NEWEST}")
    crds = subprocess.run(
        ["node", "tests/node/validate-crds.mjs", os.path.join(tmp, "helm-everything.yaml")],
        capture_output=True,
        text=True,
    )
    assert crds.returncode == 0, f"validate-crds.mjs:\n{crds.stdout}{crds.stderr}"
    checks.ok("ServiceMonitor valid against the Prometheus Operator CRD schema")


def check_parity(chart, checks):
    """The gateway Deployment from Helm and from kustomize: same pod."""
    out = subprocess.run(
        ["kubectl", "kustomize", "deploy/overlays/gateway"], capture_output=True, text=True, check=True
    ).stdout
    kustomized = [d for d in yaml.safe_load_all(out) if d]
    k_deploy = one(kustomized, "Deployment")
    k_pod = k_deploy["spec"]["template"]["spec"]
    (k_c,) = k_pod["containers"]
    k_env = env(k_c)
    # The overlay's choices, as values.
    values = {
        "allowedChannels": k_env["KVS_SIDECAR_ALLOWED_CHANNELS"].split(","),
        "tls": {
            "secretName": next(v["secret"]["secretName"] for v in k_pod["volumes"] if v["name"] == "tls"),
            "mutual": "KVS_SIDECAR_TLS_CLIENT_CA" in k_env,
        },
        "image": {"tag": k_c["image"].rsplit(":", 1)[1]},
        "autoscaling": {"enabled": True},
        "serviceMonitor": {"enabled": True},
    }
    helmed = render(chart, values)
    h_pod = one(helmed, "Deployment")["spec"]["template"]["spec"]
    (h_c,) = h_pod["containers"]
    for key in (
        "image",
        "args",
        "command",
        "env",
        "ports",
        "readinessProbe",
        "livenessProbe",
        "startupProbe",
        "securityContext",
        "resources",
        "volumeMounts",
    ):
        assert h_c.get(key) == k_c.get(key), f"parity: container {key}:\nhelm: {h_c.get(key)}\nkustomize: {k_c.get(key)}"
    for key in ("securityContext", "terminationGracePeriodSeconds", "volumes", "initContainers"):
        assert h_pod.get(key) == k_pod.get(key), f"parity: pod {key}:\nhelm: {h_pod.get(key)}\nkustomize: {k_pod.get(key)}"

    def without_selector(constraints):
        return [{k: v for k, v in c.items() if k != "labelSelector"} for c in constraints]

    assert without_selector(h_pod["topologySpreadConstraints"]) == without_selector(
        k_pod["topologySpreadConstraints"]
    ), "parity: topologySpreadConstraints"
    # The other objects: same kinds, same rules.
    assert sorted(o["kind"] for o in helmed) == sorted(o["kind"] for o in kustomized), "parity: kinds"
    same = [
        ("HorizontalPodAutoscaler", lambda s: {k: v for k, v in s.items() if k != "scaleTargetRef"}),
        ("PodDisruptionBudget", lambda s: s["minAvailable"]),
        ("NetworkPolicy", lambda s: (s["policyTypes"], s["ingress"])),
        ("ServiceMonitor", lambda s: s["endpoints"]),
        ("Service", lambda s: [(p["name"], p["port"], p["targetPort"]) for p in s["ports"]]),
    ]
    for kind, part in same:
        h, k = part(one(helmed, kind)["spec"]), part(one(kustomized, kind)["spec"])
        assert h == k, f"parity: {kind}:\nhelm: {h}\nkustomize: {k}"
    assert one(helmed, "ServiceAccount")["automountServiceAccountToken"] == one(kustomized, "ServiceAccount")[
        "automountServiceAccountToken"
    ]
    checks.ok("parity with kubectl kustomize deploy/overlays/gateway (container, pod, HPA, PDB, NetworkPolicy, ServiceMonitor, Service)")


def native_sidecar(objs, where):
    deploy = one(objs, "Deployment")
    pod = deploy["spec"]["template"]["spec"]
    check_restart_policies(objs, where)
    (sidecar,) = [c for c in pod["initContainers"] if c["name"] == "kvs-sidecar"]
    assert sidecar["restartPolicy"] == "Always", f"{where}: not a native sidecar"
    settings = env(sidecar)
    assert settings["KVS_SIDECAR_GRPC_LISTEN"].startswith("127.0.0.1:"), f"{where}: gRPC must stay on loopback"
    ports = {p["name"]: p["containerPort"] for p in sidecar["ports"]}
    assert list(ports.values()) == [port_of(settings["KVS_SIDECAR_ADMIN_LISTEN"])], f"{where}: admin port"
    assert port_of(settings["KVS_SIDECAR_GRPC_LISTEN"]) not in ports.values(), f"{where}: gRPC is not exposed"
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert sidecar[probe]["grpc"]["port"] in ports.values(), f"{where}: {probe}"
    check_hardened(sidecar, where)
    assert sidecar["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", where
    grace = int(re.fullmatch(r"(\d+)s", settings["KVS_SIDECAR_SHUTDOWN_GRACE"]).group(1))
    assert pod["terminationGracePeriodSeconds"] > grace, f"{where}: kubelet would kill the sidecar mid-drain"
    names = [c["name"] for c in pod["initContainers"] + pod["containers"]]
    assert len(names) == len(set(names)), f"{where}: container names {names}"
    return sidecar


def check_consumer(chart_dir, chart, tmp, checks):
    consumer = os.path.join(tmp, "recorder")
    shutil.copytree(CONSUMER, consumer)
    # What `helm dependency update` does with the file:// repository.
    shutil.copytree(chart_dir, os.path.join(consumer, "charts", CHART_NAME))
    deps = helm.dependency_list(consumer)
    assert [(d["name"], d["status"]) for d in deps] == [(CHART_NAME, "unpacked")], deps
    for kube in (OLDEST, NEWEST):
        lint_clean(consumer, None, kube)
    app = helm.Chart.load(consumer)
    values = app.values["kvsSidecar"]
    files = []

    objs = render(app, name="rec", namespace="media")
    assert sorted(o["kind"] for o in objs) == ["Deployment", "ServiceAccount"], "the gateway rendered in the consumer"
    sidecar = native_sidecar(objs, "consumer")
    image = values["image"]
    assert sidecar["image"] == f"{image['repository']}:{image['tag']}", sidecar["image"]
    assert sidecar["args"] == values["args"], sidecar.get("args")
    assert sidecar["resources"] == values["resources"], sidecar["resources"]
    assert env(sidecar)["KVS_SIDECAR_ALLOWED_CHANNELS"] == ",".join(values["allowedChannels"])
    files.append(write(tmp, "consumer.yaml", objs))

    # Other settings, given at install time.
    override = {
        "kvsSidecar": {
            "image": {"repository": "example.org/kvs", "tag": "9.9.9", "pullPolicy": "Always"},
            "args": ["--log-level", "debug"],
            "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}, "limits": {"memory": "64Mi"}},
            "stateStore": {"url": "redis://state:6379/1"},
            "ports": {"grpc": 6000, "admin": 7000},
            "env": [{"name": "AWS_REGION", "value": "eu-west-1"}],
        }
    }
    objs = render(app, override, name="rec", namespace="media")
    sidecar = native_sidecar(objs, "consumer with overrides")
    want = override["kvsSidecar"]
    assert sidecar["image"] == "example.org/kvs:9.9.9" and sidecar["imagePullPolicy"] == "Always", sidecar["image"]
    assert sidecar["args"] == want["args"], sidecar.get("args")
    assert sidecar["resources"] == want["resources"], sidecar["resources"]
    settings = env(sidecar)
    assert settings["KVS_SIDECAR_STATE_STORE"] == want["stateStore"]["url"], "state store"
    assert settings["KVS_SIDECAR_GRPC_LISTEN"] == "127.0.0.1:6000" and settings["AWS_REGION"] == "eu-west-1"
    assert sidecar["readinessProbe"]["grpc"]["port"] == 7000, "probes follow kvsSidecar.ports.admin"
    files.append(write(tmp, "consumer-overrides.yaml", objs))

    # No kvsSidecar at all (null deletes the fixture's): our defaults.
    objs = render(app, {"kvsSidecar": None}, name="rec", namespace="media")
    sidecar = native_sidecar(objs, "consumer with defaults")
    meta = chart.metadata
    assert sidecar["image"] == f"ghcr.io/kvs-sidecar/kvs-sidecar:{meta['appVersion']}", (
        f"the template's default image {sidecar['image']} is not the chart's appVersion"
    )
    assert "args" not in sidecar
    assert sidecar["resources"] == {"requests": {"cpu": "20m", "memory": "32Mi"}, "limits": {"memory": "96Mi"}}
    # Parity with the kustomize sidecar overlay's native sidecar.
    out = subprocess.run(
        ["kubectl", "kustomize", "deploy/overlays/sidecar"], capture_output=True, text=True, check=True
    ).stdout
    k_pod = one([d for d in yaml.safe_load_all(out) if d], "Deployment")["spec"]["template"]["spec"]
    (k_sidecar,) = [c for c in k_pod["initContainers"] if c["name"] == "kvs-sidecar"]
    for key in ("restartPolicy", "env", "startupProbe", "readinessProbe", "livenessProbe", "resources", "image"):
        assert sidecar.get(key) == k_sidecar.get(key), f"sidecar parity: {key}:\nhelm: {sidecar.get(key)}\nkustomize: {k_sidecar.get(key)}"
    assert [p["containerPort"] for p in sidecar["ports"]] == [p["containerPort"] for p in k_sidecar["ports"]]
    k_sc = copy.deepcopy(k_sidecar["securityContext"])
    h_sc = copy.deepcopy(sidecar["securityContext"])
    assert h_sc.pop("seccompProfile") == k_pod["securityContext"]["seccompProfile"]
    assert h_sc == k_sc, f"sidecar parity: securityContext {h_sc} vs {k_sc}"
    files.append(write(tmp, "consumer-defaults.yaml", objs))
    checks.ok(
        "consumer chart: vendored under charts/, lints, renders no gateway; native sidecar (restartPolicy Always, "
        "loopback, probes, hardened) honours kvsSidecar.image/args/resources/stateStore/ports/env, "
        "defaults = the kustomize sidecar's"
    )
    validate(files, checks, f"--strict of {len(files)} consumer renders at {OLDEST} and {NEWEST}")


def main(chart_dir="deploy/helm/kvs-sidecar"):
    checks = Checks()
    chart = helm.Chart.load(chart_dir)
    with tempfile.TemporaryDirectory() as tmp:
        check_metadata(chart_dir, chart, checks)
        check_lint(chart_dir, tmp, checks)
        check_schema(chart, checks)
        check_renders(chart, tmp, checks)
        check_parity(chart, checks)
        check_consumer(chart_dir, chart, tmp, checks)
    if os.environ.get("HELM_CHECKS_VERBOSE"):
        for line in checks.passed:
            print(f"  {line}")
    print(
        f"helm checks: ok ({len(checks.passed)} checks: lint, schema, renders and a consumer chart valid at "
        f"Kubernetes {OLDEST} and {NEWEST}, parity with kustomize; helm SDK {helm.helm_sdk_version()})"
    )


if __name__ == "__main__":
    main(*sys.argv[1:])
