// Print the Khronos glTF Validator's JSON report for one .glb or .gltf file.
//
//     node tests/export/validate_gltf.mjs model.glb
//
// The validator is the `gltf-validator` npm package (package.json at the repository root; `npm ci` installs
// it). Exit code 0 with the report on stdout whatever the report says (the caller judges it); 1 when the
// file could not be read or parsed at all.
import { readFile } from "node:fs/promises";
import path from "node:path";
import validator from "gltf-validator";

const file = process.argv[2];
if (!file) {
  console.error("usage: node validate_gltf.mjs FILE.glb");
  process.exit(1);
}
try {
  const bytes = new Uint8Array(await readFile(file));
  const report = await validator.validateBytes(bytes, {
    uri: path.basename(file),
    maxIssues: 100,
    // External files (a .gltf's .bin or images) are read from beside it; a .glb holds everything.
    externalResourceFunction: async (uri) =>
      new Uint8Array(await readFile(path.resolve(path.dirname(file), decodeURIComponent(uri)))),
  });
  console.log(JSON.stringify(report, null, 2));
} catch (error) {
  console.error(`cannot validate ${file}: ${error}`);
  process.exit(1);
}
