// Validates KEDA ScaledObjects and prometheus-operator ServiceMonitors (a JSON array on stdin)
// with the schema validators that @kubernetes-models/keda and
// @kubernetes-models/prometheus-operator ship (compiled from the projects' CRDs).
//
//   node validate_crds.mjs NODE_MODULES_DIR < objects.json
//
// Exit 0 when every object is valid; otherwise each error is printed and the exit code is 1.
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

const modules = process.argv[2];
if (!modules) {
  console.error("usage: node validate_crds.mjs NODE_MODULES_DIR < objects.json");
  process.exit(2);
}

// apiVersion/kind -> the package's schema module.
const SCHEMAS = {
  "keda.sh/v1alpha1/ScaledObject":
    "@kubernetes-models/keda/_schemas/ComGithubKedacoreKedaV2ApisKedaV1alpha1ScaledObject.js",
  "monitoring.coreos.com/v1/ServiceMonitor":
    "@kubernetes-models/prometheus-operator/_schemas/ComGithubPrometheusOperatorPrometheusOperatorPkgApisMonitoringV1ServiceMonitor.js",
};

const objects = JSON.parse(readFileSync(0, "utf8"));
let failed = 0;
for (const obj of objects) {
  const gvk = `${obj.apiVersion}/${obj.kind}`;
  const name = `${obj.kind}/${obj.metadata?.name}`;
  const file = SCHEMAS[gvk];
  if (!file) {
    console.log(`${name}: no schema for ${gvk}`);
    failed++;
    continue;
  }
  const { validate } = await import(pathToFileURL(join(modules, file)).href);
  if (validate(obj)) {
    console.log(`${name}: valid (${gvk})`);
  } else {
    failed++;
    // The compiled validators may report one error several times.
    const lines = validate.errors.map(
      (e) => `${name}: ${e.instancePath || "/"}: ${e.keyword} ${JSON.stringify(e.params)}`);
    for (const line of new Set(lines)) console.log(line);
  }
}
process.exit(failed ? 1 : 0);
