// The SDK side of tls.test.mjs, run as its own node process with only E2B_API_KEY, E2B_DOMAIN
// and E2B_API_URL (no E2B_SANDBOX_URL: sandboxes by host routing over HTTPS) and
// NODE_EXTRA_CA_CERTS naming the test's CA. `*.<TLS_TEST_DOMAIN>` resolves to 127.0.0.1 here
// (dns.lookup, which node's sockets and fetch use, answers it; other names as usual).
//
// Creates a sandbox serving /home/user/www on port 8000 and a file to download, and prints
// {sandboxId, preview, download} (a preview URL and a signed download URL) as JSON. The
// sandbox keeps running: the test kills it.

import dns from 'node:dns'

const domain = process.env.TLS_TEST_DOMAIN
const lookup = dns.lookup
dns.lookup = (hostname, options, callback) => {
  const cb = typeof options === 'function' ? options : callback
  const opts = typeof options === 'function' ? {} : typeof options === 'number' ? { family: options } : options || {}
  const name = String(hostname).toLowerCase()
  if (name === domain || name.endsWith('.' + domain)) {
    if (opts.all) return process.nextTick(cb, null, [{ address: '127.0.0.1', family: 4 }])
    return process.nextTick(cb, null, '127.0.0.1', 4)
  }
  return lookup(hostname, options, callback)
}

if (process.env.E2B_SANDBOX_URL) throw new Error('E2B_SANDBOX_URL must not be set')
const { Sandbox } = await import('e2b')

const sbx = await Sandbox.create({ timeoutMs: 300_000 })
await sbx.files.write('/home/user/www/index.html', '<!doctype html><title>preview</title><link rel=icon href="data:,"><h1 id=h>preview over https</h1>')
await sbx.files.write('/home/user/tls/report.txt', 'downloaded over https')
await sbx.commands.run('python3 -m http.server 8000 --directory /home/user/www', { background: true, timeoutMs: 0 })
const preview = `https://${sbx.getHost(8000)}/`
const deadline = Date.now() + 60_000
for (;;) {
  let status = 0
  try {
    status = (await fetch(preview)).status
  } catch {
    status = 0
  }
  if (status === 200) break
  if (Date.now() > deadline) throw new Error(`${preview} not serving: ${status}`)
  await new Promise((r) => setTimeout(r, 250))
}
const download = await sbx.downloadUrl('/home/user/tls/report.txt', { useSignatureExpiration: 300 })
// The background command's stream keeps a connection open: exit once the answer is out.
process.stdout.write(JSON.stringify({ sandboxId: sbx.sandboxId, preview, download }), () => process.exit(0))
