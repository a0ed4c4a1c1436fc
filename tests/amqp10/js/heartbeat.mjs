// Connect with @cloudamqp/amqp-client at a heartbeat interval, hold the connection idle for a
// while, and print one JSON line: whether it stayed open. usage: node heartbeat.mjs PORT HB SECONDS
import { AMQPClient } from "@cloudamqp/amqp-client"

const [port, hb, seconds] = process.argv.slice(2)
const amqp = new AMQPClient(`amqp://guest:guest@127.0.0.1:${port}?heartbeat=${hb}`)
const result = { heartbeat: Number(hb), open: false, errors: [] }
try {
  const conn = await amqp.connect()
  conn.onerror = (e) => result.errors.push(e.message)
  await conn.channel()
  await new Promise((r) => setTimeout(r, Number(seconds) * 1000))
  result.open = !conn.closed
  if (result.open) await conn.close()
} catch (e) {
  result.errors.push(e.message)
}
console.log(JSON.stringify(result))
