// Headless Debian Chromium for the browser tests, driven by playwright-core (no browser
// download: the machine's /usr/bin/chromium, installed by `scripts/setup.sh --test-deps`).
//
// The flags keep Chromium off the network it cannot reach here (background networking,
// component updates, sync) and let it run as root. `extraArgs` adds test-specific ones, such as
// `--host-resolver-rules` or a certificate trust flag.

import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { chromium } from 'playwright-core'

export const CHROMIUM = process.env.PADDOCK_CHROMIUM || '/usr/bin/chromium'

/** Directory where a test run's screenshots go (docs/screenshots unless overridden). */
export const SCREENSHOTS =
  process.env.PADDOCK_SCREENSHOTS ||
  path.resolve(path.dirname(new URL(import.meta.url).pathname), '..', '..', '..', '..', 'docs', 'screenshots')

/** Launches headless Chromium; the caller closes it. */
export async function launch(extraArgs = []) {
  const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'paddock-chromium-'))
  const context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: CHROMIUM,
    headless: true,
    args: [
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
      ...extraArgs,
    ],
    viewport: { width: 1280, height: 800 },
  })
  const close = async () => {
    await context.close()
    fs.rmSync(userDataDir, { recursive: true, force: true })
  }
  return { context, close }
}

/**
 * Collects a page's console errors and uncaught exceptions, so a test can assert a page loaded
 * without any.
 */
export function watchErrors(page) {
  const errors = []
  page.on('console', (msg) => {
    if (msg.type() === 'error') errors.push(`console: ${msg.text()}`)
  })
  page.on('pageerror', (err) => errors.push(`pageerror: ${err.message}`))
  return errors
}
