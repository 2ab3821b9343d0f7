// #/webhooks: the team's lifecycle webhooks (GET/POST /events/webhooks, PATCH/DELETE
// /events/webhooks/{id}): list, add, enable/disable, delete.

import { api } from './api.js'
import { badge, fill, h, report, table, time } from './ui.js'

const TYPES = ['created', 'killed', 'updated', 'paused', 'resumed', 'checkpointed']

export async function render(view, { signal }) {
  const list = h('div', { id: 'webhook-list' }, h('p', { class: 'muted' }, 'Loading…'))
  const name = h('input', { id: 'webhook-name', placeholder: 'name', required: true })
  const url = h('input', { id: 'webhook-url', placeholder: 'https://…', required: true, size: 36 })
  const secret = h('input', { id: 'webhook-secret', placeholder: 'signature secret', required: true, type: 'password' })
  const checks = TYPES.map((t) => h('label', {}, h('input', { type: 'checkbox', value: `sandbox.lifecycle.${t}`, checked: t === 'created' || t === 'killed' }), ` ${t}`))
  const load = async () => {
    const hooks = await api('/events/webhooks', { signal })
    fill(
      list,
      table(
        ['Name', 'URL', 'Events', 'State', 'Created', ''],
        hooks.map((w) =>
          h(
            'tr',
            { 'data-webhook': w.id },
            h('td', {}, w.name),
            h('td', { class: 'mono' }, w.url),
            h('td', {}, w.events.map((e) => e.replace('sandbox.lifecycle.', '')).join(', ')),
            h('td', {}, badge(w.enabled ? 'enabled' : 'disabled')),
            h('td', {}, time(w.createdAt)),
            h(
              'td',
              { class: 'actions' },
              h('button', { type: 'button', onclick: () => change(() => api(`/events/webhooks/${w.id}`, { method: 'PATCH', body: { enabled: !w.enabled } })) }, w.enabled ? 'Disable' : 'Enable'),
              h('button', { type: 'button', class: 'danger', 'data-action': 'delete', onclick: () => change(() => api(`/events/webhooks/${w.id}`, { method: 'DELETE' })) }, 'Delete'),
            ),
          ),
        ),
        'No webhooks.',
      ),
    )
  }
  const change = async (fn) => {
    try {
      await fn()
      await load()
    } catch (err) {
      report(err)
    }
  }
  const form = h(
    'form',
    {
      class: 'inline',
      id: 'webhook-form',
      onsubmit: (e) => {
        e.preventDefault()
        const events = checks.map((c) => c.firstChild).filter((c) => c.checked).map((c) => c.value)
        change(async () => {
          await api('/events/webhooks', { method: 'POST', body: { name: name.value, url: url.value, signatureSecret: secret.value, events, enabled: true } })
          form.reset()
        })
      },
    },
    name,
    url,
    secret,
    h('span', { class: 'checks' }, checks),
    h('button', { type: 'submit', class: 'primary' }, 'Add webhook'),
  )
  fill(
    view,
    h('h1', {}, 'Webhooks'),
    h('div', { class: 'card' }, list),
    h('div', { class: 'card' }, h('h2', {}, 'Add a webhook'), h('p', { class: 'muted' }, 'Paddock POSTs each chosen lifecycle event to the URL, signed with the secret (e2b-signature).'), form),
  )
  await load().catch(report)
}
