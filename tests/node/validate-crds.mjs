// Validates the Prometheus Operator objects (PodMonitor, ServiceMonitor,
// PrometheusRule) in rendered manifests against the operator's own CRD
// schemas, as packaged by @kubernetes-models/prometheus-operator; the
// Kubernetes built-ins are left to kubernetes-validate.
//
// Usage: node validate-crds.mjs RENDERED.yaml...
import { readFileSync } from "node:fs";
import { parseAllDocuments } from "yaml";
import {
  PodMonitor,
  PrometheusRule,
  ServiceMonitor,
} from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1";

const models = { PodMonitor, PrometheusRule, ServiceMonitor };
let checked = 0;
let failed = 0;
for (const file of process.argv.slice(2)) {
  for (const doc of parseAllDocuments(readFileSync(file, "utf8"))) {
    const object = doc.toJS();
    if (object?.apiVersion !== "monitoring.coreos.com/v1") continue;
    const name = `${file}: ${object.kind}/${object.metadata?.name}`;
    const Model = models[object.kind];
    try {
      if (!Model) throw new Error("no schema for this kind");
      new Model(object).validate();
      console.log(`${name}: valid`);
      checked += 1;
    } catch (error) {
      console.error(`${name}: ${error.message}`);
      failed += 1;
    }
  }
}
if (failed > 0 || checked === 0) {
  console.error(`${failed} invalid, ${checked} valid`);
  process.exit(1);
}
