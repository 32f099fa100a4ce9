package herald.mongojavaserver;

import de.bwaldvogel.mongo.MongoServer;
import de.bwaldvogel.mongo.MongoVersion;
import de.bwaldvogel.mongo.backend.memory.MemoryBackend;

import java.util.List;
import java.util.Map;
import java.util.concurrent.CountDownLatch;

/**
 * Runs mongo-java-server's in-memory backend as a MongoDB wire-protocol server until killed.
 *
 * <p>Usage: {@code Main [--host 127.0.0.1] [--port 27019] [--version 4.4]}. The data lives in
 * memory only: it is gone when the process ends.
 *
 * <p>{@code --version} sets the server version and wire version announced in {@code hello}.
 * The library's newest choice, {@code ServerVersion.MONGO_5_0}, announces maxWireVersion 8
 * (MongoDB 4.2), and current drivers refuse that: the Rust driver 3.x and PyMongo 4.20 need at
 * least 9 (MongoDB 4.4). The default here is 4.4 (wire 9), the least they accept; the server's
 * behaviour does not change with it, only what it announces.
 */
public final class Main {
    /** Wire versions of MongoDB releases (the drivers' table). */
    private static final Map<String, Integer> WIRE = Map.of(
            "3.6", 6, "4.0", 7, "4.2", 8, "4.4", 9, "5.0", 13, "6.0", 17, "7.0", 21);

    public static void main(String[] args) throws InterruptedException {
        // Before the first logger is made: the server logs every connection at INFO.
        System.setProperty("org.slf4j.simpleLogger.defaultLogLevel",
                System.getProperty("org.slf4j.simpleLogger.defaultLogLevel", "warn"));
        String host = "127.0.0.1";
        int port = 27019;
        String version = "4.4";
        for (int i = 0; i < args.length; i++) {
            String value = i + 1 < args.length ? args[i + 1] : null;
            switch (args[i]) {
                case "--host" -> { host = value; i++; }
                case "--port" -> { port = Integer.parseInt(value); i++; }
                case "--version" -> { version = value; i++; }
                default -> usage();
            }
        }
        if (!WIRE.containsKey(version)) {
            usage();
        }
        String[] parts = version.split("\\.");
        int wire = WIRE.get(version);
        List<Integer> array = List.of(Integer.parseInt(parts[0]), Integer.parseInt(parts[1]), 0);
        MongoVersion announced = new MongoVersion() {
            @Override
            public List<Integer> getVersionArray() {
                return array;
            }

            @Override
            public int getWireVersion() {
                return wire;
            }
        };
        MongoServer server = new MongoServer(new MemoryBackend().version(announced));
        server.bind(host, port);
        System.err.println("mongo-java-server (memory backend, announcing " + version + ".0, wire "
                + wire + ") listening on " + host + ":" + port);
        Runtime.getRuntime().addShutdownHook(new Thread(server::shutdownNow));
        new CountDownLatch(1).await(); // until SIGTERM/SIGINT
    }

    private static void usage() {
        System.err.println("usage: Main [--host H] [--port P] [--version " + String.join("|",
                new java.util.TreeSet<>(WIRE.keySet())) + "]");
        System.exit(2);
    }
}
