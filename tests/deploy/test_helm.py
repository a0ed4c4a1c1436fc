"""The Helm chart (helm/merpati), checked without a Kubernetes cluster.

helm comes from tests/deploy/chart.py (the `helm` fixture, tests/deploy/conftest.py). Every
rendered manifest is validated offline against the Kubernetes 1.30 and 1.35 schemas with
kubernetes-validate --strict (the ServiceMonitor and PrometheusRule CRDs, which it has no schema
for, are checked by hand).
"""

from __future__ import annotations

import base64
import shutil
import socket
import subprocess
from pathlib import Path
from unittest import mock

import pytest
import yaml

from tests.deploy.chart import CHART, ROOT, by_kind, container, env, one, render

K8S_VERSIONS = ("1.30.0", "1.35.0")

kubernetes_validate = pytest.importorskip(
    "kubernetes_validate", reason="kubernetes-validate is not installed (pip install -e '.[test]')"
)


VALUE_SETS = {
    "default": [],
    "one-replica": ["replicaCount=1"],
    "three-tls-servicemonitor": [
        "replicaCount=3",
        "tls.enabled=true",
        "tls.secretName=mq-tls",
        "metrics.serviceMonitor.enabled=true",
        "metrics.prometheusRule.enabled=true",
        "networkPolicy.enabled=true",
    ],
    "five-custom-resources": [
        "replicaCount=5",
        "resources.requests.cpu=2",
        "resources.requests.memory=4Gi",
        "resources.limits.cpu=4",
        "resources.limits.memory=8Gi",
        "persistence.size=100Gi",
        "persistence.storageClass=fast-ssd",
        "affinity.podAntiAffinity=hard",
        "config.MERPATI_STORE_SYNC=normal",
    ],
    "no-persistence-existing-secrets": [
        "persistence.enabled=false",
        "clusterSecret.existingSecret=shared",
        "auth.existingSecret=admin",
        "service.type=LoadBalancer",
    ],
}
CRD_KINDS = {"ServiceMonitor", "PrometheusRule"}


# -- lint and schema validation ---------------------------------------------------------------


def test_lint_strict(helm):
    r = subprocess.run([helm, "lint", "--strict", str(CHART)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    for sets in VALUE_SETS.values():
        args = [helm, "lint", "--strict", str(CHART)]
        for s in sets:
            args += ["--set", s]
        r = subprocess.run(args, capture_output=True, text=True)
        assert r.returncode == 0, (sets, r.stdout + r.stderr)


@pytest.mark.parametrize("name", VALUE_SETS)
def test_rendered_manifests_are_valid_kubernetes(helm, name):
    docs = render(helm, *VALUE_SETS[name])
    assert by_kind(docs, "StatefulSet")
    for doc in docs:
        if doc["kind"] in CRD_KINDS:
            assert doc["apiVersion"] == "monitoring.coreos.com/v1"
            continue
        for version in K8S_VERSIONS:
            # Raises ValidationError (or SchemaNotFoundError for an unknown kind) on any problem.
            kubernetes_validate.validate(doc, version, strict=True)


def test_schema_rejects_bad_values(helm):
    for bad in (
        "replicaCount=0",
        "unknownKey=1",
        "affinity.podAntiAffinity=sometimes",
        "ports.amqp=70000",
        "diskFreeLimit=fifty megabytes",
        "maxConnections=-1",
    ):
        r = subprocess.run(
            [helm, "template", "mq", str(CHART), "--set", bad], capture_output=True, text=True
        )
        assert r.returncode != 0, bad
    r = subprocess.run(
        [helm, "template", "mq", str(CHART), "--set", "tls.enabled=true"],
        capture_output=True,
        text=True,
    )
    assert r.returncode != 0 and "tls.secretName is required" in r.stderr


# -- properties of the rendered output ---------------------------------------------------------


def test_statefulset_parallel_and_node_ids_from_pod_name(helm):
    docs = render(helm)
    sts = one(docs, "StatefulSet")
    assert sts["spec"]["podManagementPolicy"] == "Parallel"
    assert sts["spec"]["replicas"] == 3
    headless = one(docs, "Service", "mq-merpati-headless")
    assert sts["spec"]["serviceName"] == "mq-merpati-headless"
    e = env(docs)
    assert e["MERPATI_NODE_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    port = next(p["port"] for p in headless["spec"]["ports"] if p["name"] == "cluster")
    assert e["MERPATI_PEERS"]["value"] == f"dns:mq-merpati-headless.mq.svc.cluster.local:{port}"
    assert e["MERPATI_CLUSTER_SECRET_FILE"]["value"] == "/etc/merpati/cluster/cluster-secret"
    assert e["MERPATI_DATA_DIR"]["value"] == "/data"


def test_peers_from_headless_service_match_node_ids(helm):
    """What cluster/membership.resolve_dns makes of the headless service's records: each pod's
    host name <pod>.<headless>.<ns>.svc.<domain>, first label = node id = pod name."""
    from merpati.cluster.membership import parse_peers

    for replicas in (1, 3, 5):
        docs = render(helm, f"replicaCount={replicas}")
        sts = one(docs, "StatefulSet")
        peers = env(docs)["MERPATI_PEERS"]["value"]
        _, name, port = peers.split(":")
        pods = [f"{sts['metadata']['name']}-{i}" for i in range(replicas)]
        hosts = {f"10.0.0.{i}": f"{pod}.{name}" for i, pod in enumerate(pods)}

        infos = [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (ip, int(port))) for ip in hosts]
        with (
            mock.patch("socket.getaddrinfo", return_value=infos),
            mock.patch(
                "socket.gethostbyaddr", side_effect=lambda ip, hosts=hosts: (hosts[ip], [], [ip])
            ),
        ):
            members = parse_peers(peers, 1)
        assert [m.node_id for m in members] == pods
        assert all(m.cluster_port == int(port) and m.raft_port == int(port) + 1 for m in members)
        assert members[0].host == f"{pods[0]}.mq-merpati-headless.mq.svc.cluster.local"
        # Every pod waits for all of them in DNS before forming the cluster (no pod alone).
        assert env(docs)["MERPATI_PEERS_EXPECTED"]["value"] == str(replicas)


def test_headless_service_publishes_not_ready_addresses(helm):
    docs = render(helm)
    headless = one(docs, "Service", "mq-merpati-headless")
    assert headless["spec"]["clusterIP"] == "None"
    assert headless["spec"]["publishNotReadyAddresses"] is True
    names = {p["name"]: p["port"] for p in headless["spec"]["ports"]}
    assert names["cluster"] == 25672 and names["raft"] == 25673


def test_client_service_ports(helm):
    plain = one(render(helm), "Service", "mq-merpati")
    assert {p["name"]: p["port"] for p in plain["spec"]["ports"]} == {
        "amqp": 5672,
        "management": 15672,
        "metrics": 15692,
    }
    docs = render(helm, *VALUE_SETS["three-tls-servicemonitor"])
    tls = one(docs, "Service", "mq-merpati")
    assert {p["name"]: p["port"] for p in tls["spec"]["ports"]}["amqps"] == 5671
    node = container(docs, "merpati")  # the node terminates TLS itself: no sidecar
    assert [
        c["name"] for c in one(docs, "StatefulSet")["spec"]["template"]["spec"]["containers"]
    ] == ["merpati"]
    env = {e["name"]: e.get("value") for e in node["env"]}
    assert env["MERPATI_AMQPS_PORT"] == "5671"
    assert env["MERPATI_TLS_CERT"] == "/etc/merpati/tls/tls.crt"
    assert env["MERPATI_TLS_KEY"] == "/etc/merpati/tls/tls.key"
    assert "MERPATI_TLS_VERIFY" not in env
    assert {"name": "amqps", "containerPort": 5671} in node["ports"]
    assert {"name": "tls", "mountPath": "/etc/merpati/tls", "readOnly": True} in node[
        "volumeMounts"
    ]
    sts = one(docs, "StatefulSet")
    vols = {v["name"]: v for v in sts["spec"]["template"]["spec"]["volumes"]}
    assert vols["tls"]["secret"]["secretName"] == "mq-tls"
    mtls = render(
        helm,
        *VALUE_SETS["three-tls-servicemonitor"],
        "tls.verifyPeer=true",
        "tls.failIfNoPeerCert=true",
    )
    env = {e["name"]: e.get("value") for e in container(mtls, "merpati")["env"]}
    assert env["MERPATI_TLS_CA"] == "/etc/merpati/tls/ca.crt"
    assert env["MERPATI_TLS_VERIFY"] == "peer" and env["MERPATI_TLS_FAIL_IF_NO_PEER_CERT"] == "true"


@pytest.mark.parametrize("replicas,expected", [(1, None), (2, 0), (3, 1), (4, 1), (5, 1), (7, 1)])
def test_pdb_never_takes_the_raft_majority(helm, replicas, expected):
    docs = render(helm, f"replicaCount={replicas}")
    pdbs = by_kind(docs, "PodDisruptionBudget")
    if expected is None:
        assert pdbs == []
        return
    spec = pdbs[0]["spec"]
    assert spec["maxUnavailable"] == expected
    majority = replicas // 2 + 1
    assert replicas - spec["maxUnavailable"] >= majority
    sel = one(docs, "StatefulSet")["spec"]["selector"]["matchLabels"]
    assert spec["selector"]["matchLabels"] == sel


def test_probes_do_not_kill_a_busy_node(helm):
    c = container(render(helm))
    ready = c["readinessProbe"]
    assert ready["exec"]["command"] == ["python", "/etc/merpati/scripts/probe.py", "ready"]
    live = c["livenessProbe"]
    assert live["tcpSocket"]["port"] == "amqp"
    assert live["periodSeconds"] * live["failureThreshold"] >= 300
    assert live["timeoutSeconds"] >= 5
    assert c["startupProbe"]["periodSeconds"] * c["startupProbe"]["failureThreshold"] >= 600
    script = (CHART / "files" / "probe.py").read_text()
    assert "/api/health/checks/ready-to-serve-clients" in script
    assert "merpati_raft_has_quorum" in script
    assert "/api/health/checks/node-is-quorum-critical" in script
    compile(script, "probe.py", "exec")


def test_prestop_hook_and_grace_period(helm):
    docs = render(helm, "terminationGracePeriodSeconds=300")
    sts = one(docs, "StatefulSet")
    assert sts["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 300
    c = container(docs)
    assert c["lifecycle"]["preStop"]["exec"]["command"][-1] == "prestop"
    assert env(docs)["PRESTOP_TIMEOUT"]["value"] == "285"
    cm = one(docs, "ConfigMap")
    assert cm["data"]["probe.py"] == (CHART / "files" / "probe.py").read_text()


def test_cluster_secret_generated_and_kept_through_lookup(helm):
    docs = render(helm)
    secret = one(docs, "Secret")
    assert set(secret["data"]) == {"cluster-secret", "username", "password"}
    assert secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    template = (CHART / "templates" / "secret.yaml").read_text()
    assert 'lookup "v1" "Secret" .Release.Namespace' in template
    # Given: used as is. Existing secrets: the chart creates none and points at them.
    given = one(render(helm, "clusterSecret.value=s3cr3t", "auth.password=pw"), "Secret")

    assert base64.b64decode(given["data"]["cluster-secret"]) == b"s3cr3t"
    assert base64.b64decode(given["data"]["password"]) == b"pw"
    docs = render(helm, *VALUE_SETS["no-persistence-existing-secrets"])
    assert by_kind(docs, "Secret") == []
    sts = one(docs, "StatefulSet")
    vols = {v["name"]: v for v in sts["spec"]["template"]["spec"]["volumes"]}
    assert vols["cluster-secret"]["secret"]["secretName"] == "shared"
    assert env(docs)["MERPATI_DEFAULT_PASS"]["valueFrom"]["secretKeyRef"]["name"] == "admin"
    assert "volumeClaimTemplates" not in sts["spec"]
    assert vols["data"] == {"name": "data", "emptyDir": {}}


def test_volume_claims_resources_and_scheduling(helm):
    docs = render(helm, *VALUE_SETS["five-custom-resources"])
    sts = one(docs, "StatefulSet")
    assert sts["spec"]["replicas"] == 5
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    assert claim["spec"]["resources"]["requests"]["storage"] == "100Gi"
    assert claim["spec"]["storageClassName"] == "fast-ssd"
    c = container(docs)
    assert c["resources"]["limits"] == {"cpu": 4, "memory": "8Gi"}
    assert env(docs)["MERPATI_STORE_SYNC"]["value"] == "normal"
    pod = sts["spec"]["template"]["spec"]
    assert "requiredDuringSchedulingIgnoredDuringExecution" in pod["affinity"]["podAntiAffinity"]
    default = one(render(helm), "StatefulSet")["spec"]["template"]["spec"]
    assert (
        "preferredDuringSchedulingIgnoredDuringExecution" in default["affinity"]["podAntiAffinity"]
    )
    (spread,) = default["topologySpreadConstraints"]
    assert spread["topologyKey"] == "topology.kubernetes.io/zone"
    assert spread["whenUnsatisfiable"] == "ScheduleAnyway"
    assert default["securityContext"]["runAsUser"] == 999


def test_service_monitor_and_prometheus_rule(helm):
    docs = render(helm, *VALUE_SETS["three-tls-servicemonitor"])
    sm = one(docs, "ServiceMonitor")
    paths = [e["path"] for e in sm["spec"]["endpoints"]]
    assert paths == ["/metrics", "/metrics/per-object"]
    assert all(e["port"] == "metrics" for e in sm["spec"]["endpoints"])
    job = sm["spec"]["endpoints"][0]["relabelings"][0]
    assert job == {"targetLabel": "job", "replacement": "merpati"}
    rule = one(docs, "PrometheusRule")
    deploy_rules = yaml.safe_load((ROOT / "deploy" / "alerts.yml").read_text())
    assert rule["spec"]["groups"] == deploy_rules["groups"]
    netpol = one(docs, "NetworkPolicy")
    ports = [p["port"] for rule_ in netpol["spec"]["ingress"] for p in rule_["ports"]]
    assert {5672, 5671, 15672, 15692, 25672, 25673} == set(ports)
    assert by_kind(render(helm), "ServiceMonitor") == []


def render_notes(helm: str, tmp_path: Path, *sets: str) -> str:
    """NOTES.txt as `helm install` prints it (install --dry-run needs a cluster to ask its
    version): the chart copied, the notes wrapped into a ConfigMap that `helm template` renders."""
    chart = tmp_path / "merpati"
    shutil.copytree(CHART, chart)
    notes = (chart / "templates" / "NOTES.txt").read_text()
    (chart / "templates" / "_notes_test.tpl").write_text(
        '{{- define "notes.test" -}}\n' + notes + "\n{{- end -}}\n"
    )
    (chart / "templates" / "notes_test.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: notes\ndata:\n  notes: |\n"
        '{{ include "notes.test" . | indent 4 }}\n'
    )
    cmd = [
        helm,
        "template",
        "mq",
        str(chart),
        "--namespace",
        "mq",
        "--show-only",
        "templates/notes_test.yaml",
    ]
    for s in sets:
        cmd += ["--set", s]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return yaml.safe_load(r.stdout)["data"]["notes"]


def test_notes_tell_how_to_connect(helm, tmp_path):
    notes = render_notes(helm, tmp_path)
    assert (
        "amqp://$MERPATI_USER:$MERPATI_PASSWORD@mq-merpati.mq.svc.cluster.local:5672/%2F" in notes
    )
    assert "kubectl port-forward -n mq svc/mq-merpati 5672 15672" in notes
    assert "merpati ctl add_node mq-merpati-N mq-merpati-N.mq-merpati-headless.mq.svc" in notes
    assert "amqps://" not in notes and "WARNING" not in notes
    notes = render_notes(helm, tmp_path / "tls", *VALUE_SETS["three-tls-servicemonitor"])
    assert "mq-merpati.mq.svc.cluster.local:5671/%2F" in notes
    notes = render_notes(helm, tmp_path / "one", "replicaCount=1")
    assert "does not survive losing a node" in notes


@pytest.mark.parametrize("source", ["existingSecret", "existingConfigMap"])
def test_definitions_are_mounted_and_loaded_at_start(helm, source):
    docs = render(helm, f"definitions.{source}=mq-defs", "definitions.key=defs.json")
    node = container(docs, "merpati")
    assert env(docs)["MERPATI_LOAD_DEFINITIONS"]["value"] == "/etc/merpati/definitions/defs.json"
    assert {"name": "definitions", "mountPath": "/etc/merpati/definitions", "readOnly": True} in (
        node["volumeMounts"]
    )
    vols = {v["name"]: v for v in one(docs, "StatefulSet")["spec"]["template"]["spec"]["volumes"]}
    ref = vols["definitions"]
    assert (
        ref["secret"]["secretName"] if source == "existingSecret" else ref["configMap"]["name"]
    ) == "mq-defs"
    assert "MERPATI_LOAD_DEFINITIONS" not in env(render(helm))


def test_cluster_tls_mounts_the_secret_and_sets_the_node_flags(helm):
    docs = render(helm, "clusterTls.enabled=true", "clusterTls.secretName=mq-cluster-tls")
    e = env(docs)
    assert e["MERPATI_CLUSTER_TLS_CERT"]["value"] == "/etc/merpati/cluster-tls/tls.crt"
    assert e["MERPATI_CLUSTER_TLS_KEY"]["value"] == "/etc/merpati/cluster-tls/tls.key"
    assert e["MERPATI_CLUSTER_TLS_CA"]["value"] == "/etc/merpati/cluster-tls/ca.crt"
    vols = {v["name"]: v for v in one(docs, "StatefulSet")["spec"]["template"]["spec"]["volumes"]}
    assert vols["cluster-tls"]["secret"]["secretName"] == "mq-cluster-tls"
    assert "MERPATI_CLUSTER_TLS_CERT" not in env(render(helm))


def test_cluster_tls_without_a_secret_name_is_refused(helm):
    import subprocess

    from tests.deploy.chart import CHART

    r = subprocess.run(
        [helm, "template", "mq", str(CHART), "--set", "clusterTls.enabled=true"],
        capture_output=True,
        text=True,
    )
    assert r.returncode != 0 and "clusterTls.secretName is required" in r.stderr


def test_resource_protection_values_reach_the_node(helm):
    e = env(render(helm))
    assert e["MERPATI_DISK_FREE_LIMIT"]["value"] == "50MB"
    assert e["MERPATI_MAX_CONNECTIONS"]["value"] == "0"
    e = env(render(helm, "diskFreeLimit=mem_relative:1.5", "maxConnections=5000"))
    assert e["MERPATI_DISK_FREE_LIMIT"]["value"] == "mem_relative:1.5"
    assert e["MERPATI_MAX_CONNECTIONS"]["value"] == "5000"
