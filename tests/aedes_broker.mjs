// A plain aedes MQTT broker on a loopback port for the conformance tests
// (tests/test_conformance_brokers.py): `node tests/aedes_broker.mjs PORT`
// prints "listening <port>" once it accepts connections; SIGTERM closes it.
import { createServer } from 'node:net'
import { Aedes } from 'aedes'

const aedes = await Aedes.createBroker()
const server = createServer(aedes.handle)
server.listen(Number(process.argv[2] || 0), '127.0.0.1', () => {
  console.log(`listening ${server.address().port}`)
})
process.on('SIGTERM', () => aedes.close(() => server.close(() => process.exit(0))))
