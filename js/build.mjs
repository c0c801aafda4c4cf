// Builds the screens' bundles into meshpos/screens/ (committed, so a terminal needs no Node):
//   npm ci && npm run build          (in js/)
// Writes kds.bundle.js and tables.bundle.js (yjs + y-websocket + js/src, minified) and
// bundle-licenses.txt (the licence of every npm package inside them).  The same sources and
// the locked versions give the same bytes: tests/test_bundle.py rebuilds into a temporary
// directory and compares, so the committed bundle cannot drift from its source.
import { build } from 'esbuild'
import { readFileSync, writeFileSync, existsSync } from 'node:fs'
import { dirname, join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'

const here = dirname(fileURLToPath(import.meta.url))
const outdir = resolve(process.argv[2] || join(here, '..', 'meshpos', 'screens'))
const entries = { kds: 'src/kds.js', tables: 'src/tables.js' }

const result = await build({
  entryPoints: Object.fromEntries(Object.entries(entries).map(([name, src]) => [`${name}.bundle`, join(here, src)])),
  outdir,
  bundle: true,
  format: 'iife',
  platform: 'browser',
  target: ['es2020'],
  minify: true,
  legalComments: 'none',
  metafile: true,
  logLevel: 'warning'
})

// node_modules/<pkg>/... (or node_modules/@scope/pkg/...) of every input
const packages = new Set()
for (const input of Object.keys(result.metafile.inputs)) {
  const m = input.match(/node_modules\/((?:@[^/]+\/)?[^/]+)\//)
  if (m) packages.add(m[1])
}
const parts = ['Third-party code inside kds.bundle.js and tables.bundle.js (built by js/build.mjs).\n']
for (const name of [...packages].sort()) {
  const dir = join(here, 'node_modules', name)
  const meta = JSON.parse(readFileSync(join(dir, 'package.json'), 'utf8'))
  const file = ['LICENSE', 'LICENSE.md', 'LICENSE.txt', 'license'].map(f => join(dir, f)).find(existsSync)
  parts.push(`\n==== ${name} ${meta.version} (${meta.license}) ====\n`)
  parts.push(file ? readFileSync(file, 'utf8') : `licence: ${meta.license} (no licence file in the package)\n`)
}
writeFileSync(join(outdir, 'bundle-licenses.txt'), parts.join(''))
