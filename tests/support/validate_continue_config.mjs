// Validate a Continue config.yaml against Continue's own schema (npm @continuedev/config-yaml, the
// package Continue's IDE extensions load config.yaml with). Usage:
//   node validate_continue_config.mjs NODE_MODULES_DIR CONFIG_YAML
// Prints {"ok": true} or {"ok": false, "issues": [...]} (zod's issues) and exits 0 either way;
// exits 2 when the package cannot be loaded.
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

const [modules, configPath] = process.argv.slice(2);
const load = (rel) => import(pathToFileURL(join(modules, rel)).href);
let schema, YAML;
try {
  ({ configYamlSchema: schema } = await load("@continuedev/config-yaml/dist/index.js"));
  YAML = (await load("yaml/dist/index.js")).default ?? (await load("yaml/dist/index.js"));
} catch (err) {
  console.error(`cannot load @continuedev/config-yaml from ${modules}: ${err}`);
  process.exit(2);
}
const result = schema.safeParse(YAML.parse(readFileSync(configPath, "utf8")));
console.log(JSON.stringify(result.success ? { ok: true } : { ok: false, issues: result.error.issues }));
