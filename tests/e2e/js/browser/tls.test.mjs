// HTTPS in a browser: `paddock serve --tls-cert --tls-key --domain paddock.test:<proxy port>`
// with a wildcard certificate for `*.paddock.test` from a throwaway CA made here (openssl).
// The JS SDK (its own process, tls_sdk.mjs, trusting the CA) starts a web server in a
// sandbox; Chromium, resolving `*.paddock.test` to 127.0.0.1 and trusting the test's leaf by
// its public key (`--ignore-certificate-errors-spki-list`: pinning this certificate, no other
// error is ignored), opens the preview URL and a signed download URL over HTTPS.

import assert from 'node:assert/strict'
import { execFileSync, execFile } from 'node:child_process'
import { createHash, X509Certificate } from 'node:crypto'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { after, before, test } from 'node:test'
import { fileURLToPath } from 'node:url'

import { PaddockServer } from '../paddock.mjs'
import { launch, watchErrors } from './chromium.mjs'

const here = path.dirname(fileURLToPath(import.meta.url))
const DOMAIN = 'paddock.test'

/** A CA and a certificate for `*.paddock.test` and `paddock.test` it signed. */
function makePki(dir) {
  const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-days', '2']
  const f = (name) => path.join(dir, name)
  execFileSync('openssl', ['req', '-x509', ...ec, '-keyout', f('ca.key'), '-out', f('ca.pem'),
    '-subj', '/CN=Paddock e2e throwaway CA',
    '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign'],
  { stdio: 'pipe' })
  execFileSync('openssl', ['req', '-x509', ...ec, '-keyout', f('key.pem'), '-out', f('cert.pem'),
    '-subj', `/CN=${DOMAIN}`, '-CA', f('ca.pem'), '-CAkey', f('ca.key'),
    '-addext', `subjectAltName=DNS:*.${DOMAIN},DNS:${DOMAIN}`,
    '-addext', 'basicConstraints=critical,CA:FALSE', '-addext', 'extendedKeyUsage=serverAuth'],
  { stdio: 'pipe' })
  return { ca: f('ca.pem'), cert: f('cert.pem'), key: f('key.pem') }
}

/** base64(sha256(SubjectPublicKeyInfo)) of the certificate in `pemFile`: Chromium's pin. */
function spkiPin(pemFile) {
  const spki = new X509Certificate(fs.readFileSync(pemFile)).publicKey.export({ type: 'spki', format: 'der' })
  return createHash('sha256').update(spki).digest('base64')
}

const pkiDir = fs.mkdtempSync(path.join(os.tmpdir(), 'paddock-tls-'))
const pki = makePki(pkiDir)
const server = new PaddockServer({
  https: true,
  readyExports: ['E2B_DOMAIN', 'E2B_API_URL', 'E2B_API_KEY'],
  extraArgs: (s) => ['--tls-cert', pki.cert, '--tls-key', pki.key, '--domain', `${DOMAIN}:${s.proxyPort}`],
})
let made

before(async () => {
  await server.start()
  assert.equal(server.exports.E2B_SANDBOX_URL, undefined)
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('E2B_')))
  Object.assign(env, {
    E2B_API_KEY: server.exports.E2B_API_KEY,
    E2B_DOMAIN: server.exports.E2B_DOMAIN,
    E2B_API_URL: server.exports.E2B_API_URL,
    NODE_EXTRA_CA_CERTS: pki.ca,
    TLS_TEST_DOMAIN: DOMAIN,
  })
  const stdout = await new Promise((resolve, reject) => {
    execFile(process.execPath, [path.join(here, 'tls_sdk.mjs')], { env, timeout: 300_000 }, (err, out, errOut) =>
      err ? reject(new Error(`tls_sdk.mjs failed: ${err.message}\n${errOut}`)) : resolve(out),
    )
  })
  made = JSON.parse(stdout)
  server.track(made.sandboxId)
})

after(async () => {
  await server.stopChecked()
  fs.rmSync(pkiDir, { recursive: true, force: true })
})

test('a preview URL and a signed download URL open over HTTPS in Chromium', async () => {
  const port = server.proxyPort
  assert.equal(made.preview, `https://8000-${made.sandboxId}.${DOMAIN}:${port}/`)
  assert.ok(made.download.startsWith(`https://49983-${made.sandboxId}.${DOMAIN}:${port}/files?`), made.download)
  assert.match(made.download, /signature=v1_/)
  const { context, close } = await launch([
    `--host-resolver-rules=MAP *.${DOMAIN} 127.0.0.1`,
    `--ignore-certificate-errors-spki-list=${spkiPin(pki.cert)}`,
  ])
  try {
    const page = await context.newPage()
    const errors = watchErrors(page)
    const res = await page.goto(made.preview)
    assert.equal(res.status(), 200)
    assert.equal(await page.textContent('#h'), 'preview over https')
    const security = await res.securityDetails()
    assert.ok(security, 'served over TLS')
    assert.equal(security.subjectName, DOMAIN)
    assert.equal(await page.evaluate(() => window.isSecureContext), true)

    assert.deepEqual(errors, [], 'the preview page loads without errors')

    // The download in a page of its own: Chromium also asks envd's origin for /favicon.ico,
    // which envd answers 401 (no token), so 401s are the only errors allowed there.
    const files = await context.newPage()
    const fileErrors = watchErrors(files)
    const dl = await files.goto(made.download)
    assert.equal(dl.status(), 200)
    assert.equal((await dl.body()).toString(), 'downloaded over https')
    assert.ok((await dl.securityDetails())?.protocol.startsWith('TLS'), 'over TLS')

    // The same URL without its signature is refused: the URL alone is the credential.
    const unsigned = await files.goto(made.download.replace(/([?&])signature=[^&]*/, '$1'))
    assert.equal(unsigned.status(), 401)
    assert.ok(fileErrors.length >= 1, 'the 401 is reported')
    for (const e of fileErrors) assert.match(e, /status of 401/)
  } finally {
    await close()
  }
})

test('a certificate Chromium was not told to trust is refused', async () => {
  // Without the pin the throwaway CA is unknown: the page does not load.
  const { context, close } = await launch([`--host-resolver-rules=MAP *.${DOMAIN} 127.0.0.1`])
  try {
    const page = await context.newPage()
    await assert.rejects(page.goto(made.preview), /ERR_CERT_AUTHORITY_INVALID/)
  } finally {
    await close()
  }
})
