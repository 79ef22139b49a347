'use strict'
// Dump hypercore 11 proofs for many requests as JSON: the source of
// test_merkle_hypercore_proofs.json (condensed by the snippet in that test's docstring).
// Run: NODE_PATH=../shared/anchors/js/node_modules node tests/test_hyperlog/test_merkle_hypercore_proofs.js 37
const os = require('os'), fs = require('fs'), path = require('path')
const sodium = require('sodium-native')
const Hypercore = require('hypercore')
const n = Number(process.argv[2] || 37)
const hex = b => Buffer.from(b).toString('hex')
const nd = ns => ns.map(x => [x.index, x.size, hex(x.hash)])
async function main () {
  const seed = Buffer.alloc(32, 9); const pk = Buffer.alloc(32); const sk = Buffer.alloc(64)
  sodium.crypto_sign_seed_keypair(pk, sk, seed)
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'hlx-'))
  const core = new Hypercore(dir, { keyPair: { publicKey: pk, secretKey: sk } })
  await core.ready()
  const blocks = []
  for (let i = 0; i < n; i++) blocks.push(Buffer.from('block-' + i + '-' + 'x'.repeat(i % 7)))
  // append in uneven batches
  for (let i = 0; i < n;) { const k = 1 + (i % 5); await core.append(blocks.slice(i, i + k)); i += k }
  const out = { n, seed: hex(seed), blocks: blocks.map(hex), key: hex(core.key), cases: [] }
  const reqs = []
  for (let start = 0; start < n; start += 3) {
    for (const len of [1, 2, n - start]) {
      if (start + len > n || len < 1) continue
      reqs.push({ upgrade: { start, length: len } })
      for (const b of [0, start, start + len - 1, Math.floor((start + len) / 2)]) {
        if (b < start + len) reqs.push({ block: { index: b, nodes: 0 }, upgrade: { start, length: len } })
      }
      if (start > 0) reqs.push({ block: { index: start - 1, nodes: 2 }, upgrade: { start, length: len } })
    }
  }
  for (let b = 0; b < n; b += 4) for (const k of [0, 1, 3]) reqs.push({ block: { index: b, nodes: k } })
  for (const h of [1, 3, 5, 9, 11, 19]) reqs.push({ hash: { index: h, nodes: 0 } })
  for (const r of reqs) {
    try {
      const p = await core.proof({ fork: 0, ...r })
      out.cases.push({
        req: r,
        block: p.block ? { index: p.block.index, nodes: nd(p.block.nodes) } : null,
        hash: p.hash ? { index: p.hash.index, nodes: nd(p.hash.nodes) } : null,
        upgrade: p.upgrade ? { start: p.upgrade.start, length: p.upgrade.length, nodes: nd(p.upgrade.nodes), additional: nd(p.upgrade.additionalNodes), signature: hex(p.upgrade.signature) } : null
      })
    } catch (e) { out.cases.push({ req: r, error: String(e.message || e) }) }
  }
  await core.close()
  fs.rmSync(dir, { recursive: true, force: true })
  process.stdout.write(JSON.stringify(out))
}
main().catch(e => { console.error(e); process.exit(1) })
