// #/templates: the team's templates; #/templates/<id>: one template's builds, and the logs of
// the chosen build, followed live (GET .../builds/{build}/status?logsOffset=N every 1.5 s)
// while it builds.

import { api } from './api.js'
import { ago, badge, every, fill, h, report, table, time } from './ui.js'

export async function render(view, ctx) {
  return ctx.params[0] ? one(view, ctx) : all(view, ctx)
}

async function all(view, { signal }) {
  const list = h('div', { id: 'template-list' }, h('p', { class: 'muted' }, 'Loading…'))
  fill(view, h('h1', {}, 'Templates'), h('div', { class: 'card' }, list))
  every(10000, signal, async () => {
    const rows = await api('/templates', { signal })
    fill(
      list,
      table(
        ['Template', 'Names', 'Status', 'Resources', 'Builds', 'Sandboxes started', 'Updated'],
        rows.map((t) =>
          h(
            'tr',
            { 'data-template': t.templateID },
            h('td', {}, h('a', { href: `#/templates/${encodeURIComponent(t.templateID)}`, class: 'mono' }, t.templateID)),
            h('td', {}, (t.names?.length ? t.names : t.aliases ?? []).join(', ')),
            h('td', {}, badge(t.buildStatus)),
            h('td', {}, `${t.cpuCount} CPU, ${t.memoryMB} MiB, ${t.diskSizeMB} MiB disk`),
            h('td', {}, String(t.buildCount)),
            h('td', { title: t.lastSpawnedAt ? `last ${time(t.lastSpawnedAt)}` : '' }, String(t.spawnCount)),
            h('td', { title: time(t.updatedAt) }, ago(t.updatedAt)),
          ),
        ),
        'No templates yet.',
      ),
    )
  })
}

async function one(view, { signal, params: [id] }) {
  const builds = h('div', { id: 'build-list' }, h('p', { class: 'muted' }, 'Loading…'))
  const logTitle = h('h2', {}, 'Build logs')
  const logStatus = h('p', { class: 'muted', id: 'build-status' }, 'Choose a build.')
  const logs = h('pre', { class: 'logs', id: 'build-logs' })
  fill(
    view,
    h('h1', {}, 'Template ', h('span', { class: 'mono' }, id)),
    h('div', { class: 'card' }, h('h2', {}, 'Builds'), builds),
    h('div', { class: 'card' }, logTitle, logStatus, logs),
  )

  let following = null
  const follow = (build) => {
    following?.abort()
    following = new AbortController()
    signal.addEventListener('abort', () => following.abort())
    const s = following.signal
    fill(logs)
    logStatus.textContent = `Build ${build.buildID}: loading…`
    let offset = 0
    const poll = async () => {
      if (s.aborted) return
      let info
      try {
        info = await api(`/templates/${encodeURIComponent(id)}/builds/${build.buildID}/status?logsOffset=${offset}&limit=100`, { signal: s })
      } catch (err) {
        if (err.status === 404) {
          logStatus.textContent = `Build ${build.buildID}: no build logs. This template was not built through the build API (like base, made on the server's disk).`
        } else report(err)
        return
      }
      const entries = info.logEntries ?? []
      for (const e of entries) {
        logs.append(h('span', { class: e.level }, `${time(e.timestamp)} ${e.step ? `[${e.step}] ` : ''}${e.message}\n`))
      }
      offset += entries.length
      if (entries.length) logs.scrollTop = logs.scrollHeight
      fill(logStatus, `Build ${build.buildID}: `, badge(info.status), info.reason?.message ? ` ${info.reason.message}` : '')
      if (!logs.childElementCount) fill(logs, h('span', { class: 'debug' }, 'No log lines yet.'))
      const live = info.status === 'building' || info.status === 'waiting'
      if (entries.length === 100 || live) setTimeout(poll, entries.length === 100 ? 0 : 1500)
      else if (build.status !== info.status) showBuilds().catch(report) // it just finished
    }
    poll()
  }

  const showBuilds = async () => {
    const t = await api(`/templates/${encodeURIComponent(id)}`, { signal })
    const list = [...(t.builds ?? [])].sort((a, b) => String(b.createdAt).localeCompare(String(a.createdAt)))
    fill(
      builds,
      h('p', {}, `${t.cpuCount} CPU, ${t.memoryMB} MiB memory, ${t.diskSizeMB} MiB disk; names: ${(t.names ?? []).join(', ') || '–'}`),
      table(
        ['Build', 'Status', 'Created', 'Finished', ''],
        list.map((b) => [
          h('span', { class: 'mono' }, b.buildID),
          badge(b.status),
          time(b.createdAt),
          b.finishedAt ? time(b.finishedAt) : '–',
          h('button', { type: 'button', 'data-build': b.buildID, onclick: () => follow(b) }, 'Logs'),
        ]),
        'No builds.',
      ),
    )
    return list
  }

  // A build in progress is followed at once; finished ones on request.
  const list = await showBuilds()
  const running = list.find((b) => b.status === 'building' || b.status === 'waiting')
  if (running) follow(running)
}
