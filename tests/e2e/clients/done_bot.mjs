// A "tell me when it is done" bot on the npm `eventsource` package (pinned in
// package.json), as a bot author would write it: EventSource(url + '?progress'),
// count the `done` events, let the library reconnect at the server's windows.
//
//   node done_bot.mjs PIPE_URL [--seconds S] [--follow]
//
// It never closes the stream itself: the server's 204 after the done is what
// must stop it. Every event, request and error is logged on stderr as it
// happens; after S seconds (default 10) it prints one JSON object on stdout:
//   counts    {state, progress, done, error}
//   events    [{type, id, at, connection, state}]   (at: ms since start)
//   requests  [{at, lastEventId, status}]           (every fetch the library made)
//   errors    [{at, code, message, readyState}]
//   readyState at the end (2 = CLOSED)
import {EventSource} from 'eventsource'

const args = process.argv.slice(2)
const base = args.find((a) => !a.startsWith('--'))
if (!base) {
  console.error('usage: node done_bot.mjs PIPE_URL [--seconds S] [--follow]')
  process.exit(2)
}
const option = (name, fallback) => {
  const i = args.indexOf(name)
  return i >= 0 && i + 1 < args.length ? Number(args[i + 1]) : fallback
}
const seconds = option('--seconds', 10)
const url = base + '?progress' + (args.includes('--follow') ? '&follow=1' : '')

const started = performance.now()
const at = () => Math.round(performance.now() - started)
const counts = {state: 0, progress: 0, done: 0, error: 0}
const events = []
const requests = []
const errors = []
const log = (line) => process.stderr.write(`${at()} ${line}\n`)

function header(init, name) {
  const headers = init && init.headers
  if (!headers) return null
  if (typeof headers.get === 'function') return headers.get(name)
  const key = Object.keys(headers).find((k) => k.toLowerCase() === name.toLowerCase())
  return key === undefined ? null : headers[key]
}

// The library's own fetch, wrapped to see every (re)connection it makes.
function countingFetch(input, init) {
  const request = {at: at(), lastEventId: header(init, 'Last-Event-ID'), status: null}
  requests.push(request)
  log(`request ${requests.length} Last-Event-ID=${request.lastEventId}`)
  return fetch(input, init).then(
    (response) => {
      request.status = response.status
      log(`response ${requests.length} ${response.status}`)
      return response
    },
    (error) => {
      request.error = String(error)
      throw error
    },
  )
}

const source = new EventSource(url, {fetch: countingFetch})

for (const type of ['state', 'progress', 'done']) {
  source.addEventListener(type, (event) => {
    counts[type] += 1
    let data = null
    try {
      data = JSON.parse(event.data)
    } catch {
      data = null
    }
    const state = data && typeof data.state === 'string' ? data.state : null
    events.push({type, id: event.lastEventId, at: at(), connection: requests.length, state, data})
    log(`event ${type} id=${event.lastEventId}${state ? ' ' + state : ''}`)
  })
}

source.addEventListener('error', (event) => {
  counts.error += 1
  errors.push({at: at(), code: event.code ?? null, message: event.message ?? null, readyState: source.readyState})
  log(`error code=${event.code} readyState=${source.readyState} ${event.message ?? ''}`)
})

function finish() {
  const readyState = source.readyState
  source.close()
  process.stdout.write(JSON.stringify({url, counts, events, requests, errors, readyState}) + '\n')
  process.exit(0)
}

setTimeout(finish, seconds * 1000)
process.on('SIGTERM', finish)
