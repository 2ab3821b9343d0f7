// The dashboard's shell: sign-in, hash routing (#/sandboxes, #/sandboxes/<id>, #/templates,
// #/templates/<id>, #/nodes, #/webhooks) and the page lifecycle: each page gets an
// AbortSignal that aborts its requests, streams and timers when another page opens.

import { api, session } from './api.js'
import { clearError, fill, h, report } from './ui.js'
import * as sandboxes from './sandboxes.js'
import * as sandbox from './sandbox.js'
import * as templates from './templates.js'
import * as nodes from './nodes.js'
import * as webhooks from './webhooks.js'

const routes = [
  [/^#\/sandboxes$/, sandboxes, 'sandboxes'],
  [/^#\/sandboxes\/([a-z0-9]+)$/, sandbox, 'sandboxes'],
  [/^#\/templates$/, templates, 'templates'],
  [/^#\/templates\/([^/]+)$/, templates, 'templates'],
  [/^#\/nodes$/, nodes, 'nodes'],
  [/^#\/webhooks$/, webhooks, 'webhooks'],
]

let current = null

function route() {
  current?.abort()
  current = new AbortController()
  const signal = current.signal
  clearError()
  const view = document.getElementById('view')
  const signedIn = Boolean(session.key)
  document.getElementById('nav').hidden = !signedIn
  document.getElementById('signout').hidden = !signedIn
  if (!signedIn) {
    signIn(view)
    return
  }
  const hash = location.hash || '#/sandboxes'
  for (const [re, page, nav] of routes) {
    const m = hash.match(re)
    if (!m) continue
    for (const a of document.querySelectorAll('#nav a')) a.classList.toggle('active', a.dataset.page === nav)
    fill(view)
    let params
    try {
      params = m.slice(1).map(decodeURIComponent)
    } catch {
      break // a malformed escape (`#/templates/%`): the default page
    }
    Promise.resolve(page.render(view, { signal, params })).catch(report)
    return
  }
  location.replace('#/sandboxes')
}

function signIn(view) {
  const key = h('input', { id: 'api-key', type: 'password', autocomplete: 'off', required: true, placeholder: 'e2b_…' })
  const admin = h('input', { id: 'admin-token', type: 'password', autocomplete: 'off', placeholder: 'optional' })
  const error = h('div', { class: 'error', id: 'signin-error', role: 'alert' })
  const submit = h('button', { class: 'primary', type: 'submit', id: 'signin' }, 'Sign in')
  const form = h(
    'form',
    {
      class: 'card signin',
      onsubmit: async (e) => {
        e.preventDefault()
        error.textContent = ''
        submit.disabled = true
        const k = key.value.trim()
        const t = admin.value.trim()
        try {
          await api('/v2/sandboxes?limit=1', { key: k })
          if (t) await api('/nodes', { admin: true, token: t })
          session.save(k, t)
          route()
        } catch (err) {
          error.textContent = err.message
        } finally {
          submit.disabled = false
        }
      },
    },
    h('h1', {}, 'Sign in'),
    h('p', { class: 'muted' }, 'The dashboard reads everything through the REST API with your key, kept in this tab only (sessionStorage).'),
    h('label', { for: 'api-key' }, 'API key (E2B_API_KEY)'),
    key,
    h('label', { for: 'admin-token' }, 'Admin token (for the nodes page)'),
    admin,
    h('p', {}, submit),
    error,
  )
  fill(view, form)
  key.focus()
}

document.getElementById('signout').addEventListener('click', () => {
  session.clear()
  location.hash = '#/sandboxes'
  route()
})
document.getElementById('banner-close').addEventListener('click', clearError)
window.addEventListener('hashchange', route)
route()
