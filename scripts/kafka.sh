#!/usr/bin/env bash
# Apache Kafka without Docker: the broker's jars from Maven Central, run in KRaft mode
# with `java -cp`. Used by scripts/test.sh and by the tests that need a broker of their own.
#
#   scripts/kafka.sh libs                     # resolves the pinned broker (cached), prints its libs dir
#   scripts/kafka.sh run DIR PORT CTRL_PORT   # formats DIR and runs a single node (broker +
#                                             # controller) in the foreground on 127.0.0.1
#   scripts/kafka.sh node DIR ID PORT VOTERS CLUSTER_ID
#                                             # one node of a cluster: node.id ID, VOTERS as
#                                             # 1@127.0.0.1:C1,2@127.0.0.1:C2,...; every node
#                                             # of a cluster gets the same CLUSTER_ID
#   scripts/kafka.sh cluster-id               # prints a new cluster id
#   scripts/kafka.sh secure DIR PORT CTRL_PORT PROTOCOL TLS_DIR [USER PASSWORD]
#                                             # one node whose only listener for clients (and
#                                             # for itself) is PROTOCOL, SSL or SASL_SSL:
#                                             # TLS_DIR holds ca.pem, broker.pem and broker.key
#                                             # (PEM; the key unencrypted PKCS#8); SASL_SSL
#                                             # takes SCRAM-SHA-512 and creates USER with
#                                             # PASSWORD when it formats DIR
#
# A cluster of N nodes replicates topics and the group offsets N times (at most 3) and
# takes acks=all writes with min.insync.replicas = that factor - 1: it keeps accepting
# with one node lost. Running DIR again (same ports) restarts a node with its data.
#
# Needs java (17+) and mvn. The jars are cached under $ORDER_PIPELINE_CACHE (default
# $HOME/.cache/order-pipeline); Maven keeps its downloads in ~/.m2.
set -euo pipefail

KAFKA_VERSION="4.1.1"
LOG4J_VERSION="2.24.3"
CACHE="${ORDER_PIPELINE_CACHE:-$HOME/.cache/order-pipeline}"
LIBS="$CACHE/kafka-$KAFKA_VERSION/libs"

libs() {
  if [ ! -f "$LIBS/.complete" ]; then
    local pom_dir
    pom_dir="$(mktemp -d)"
    # The broker (core) and, as the distribution adds, log4j's slf4j binding: without it
    # the broker logs nothing.
    cat > "$pom_dir/pom.xml" <<EOF
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local.order-pipeline</groupId><artifactId>kafka-broker</artifactId><version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId><version>$KAFKA_VERSION</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j-impl</artifactId><version>$LOG4J_VERSION</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-core</artifactId><version>$LOG4J_VERSION</version></dependency>
  </dependencies>
</project>
EOF
    rm -rf "$LIBS"
    if ! mvn -B -q -f "$pom_dir/pom.xml" \
      org.apache.maven.plugins:maven-dependency-plugin:3.8.1:copy-dependencies \
      -DincludeScope=runtime -DoutputDirectory="$LIBS" > "$pom_dir/mvn.log" 2>&1; then
      cat "$pom_dir/mvn.log" >&2
      echo "error: Maven could not resolve Apache Kafka $KAFKA_VERSION (above)" >&2
      exit 1
    fi
    rm -rf "$pom_dir"
    touch "$LIBS/.complete"
  fi
  echo "$LIBS"
}

log4j() { # dir: the broker logs to DIR/broker.log
  cat > "$1/log4j2.properties" <<EOF
status = error
appender.file.type = File
appender.file.name = FILE
appender.file.fileName = $1/broker.log
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = info
rootLogger.appenderRef.file.ref = FILE
EOF
}

java_cmd() { # dir
  # The classpath stays quoted: the JVM expands the *, not the shell.
  JAVA=(java -Xms256m -Xmx512m -XX:+UseG1GC -Djava.awt.headless=true
    "-Dlog4j2.configurationFile=$1/log4j2.properties" -cp "$(libs)/*")
}

run() {
  local dir="$1" port="$2" ctrl="$3"
  local id=""
  [ -f "$dir/cluster.id" ] && id="$(cat "$dir/cluster.id")"
  if [ -z "$id" ]; then
    id="$(cluster_id)"
  fi
  node "$dir" 1 "$port" "1@127.0.0.1:$ctrl" "$id"
}

cluster_id() {
  local libs
  libs="$(libs)"
  java -cp "$libs/*" kafka.tools.StorageTool random-uuid
}

node() {
  local dir="$1" node_id="$2" port="$3" voters="$4" cluster="$5"
  local ctrl nodes replication min_isr
  ctrl="$(tr ',' '\n' <<< "$voters" | sed -n "s/^$node_id@[^:]*:\([0-9]*\)$/\1/p")"
  [ -n "$ctrl" ] || { echo "node $node_id is not among the voters $voters" >&2; exit 2; }
  nodes="$(tr ',' '\n' <<< "$voters" | wc -l)"
  replication=$(( nodes < 3 ? nodes : 3 ))
  min_isr=$(( replication > 1 ? replication - 1 : 1 ))
  mkdir -p "$dir/data"
  echo "$cluster" > "$dir/cluster.id"
  cat > "$dir/server.properties" <<EOF
process.roles=broker,controller
node.id=$node_id
controller.quorum.voters=$voters
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$ctrl
advertised.listeners=PLAINTEXT://127.0.0.1:$port
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$dir/data
offsets.topic.replication.factor=$replication
offsets.topic.num.partitions=1
default.replication.factor=$replication
min.insync.replicas=$min_isr
transaction.state.log.replication.factor=$replication
transaction.state.log.min.isr=$min_isr
share.coordinator.state.topic.replication.factor=$replication
share.coordinator.state.topic.min.isr=$min_isr
group.initial.rebalance.delay.ms=0
log.cleaner.dedupe.buffer.size=16777216
EOF
  log4j "$dir"
  java_cmd "$dir"
  "${JAVA[@]}" kafka.tools.StorageTool format -t "$cluster" -c "$dir/server.properties" \
    --ignore-formatted >/dev/null
  exec "${JAVA[@]}" kafka.Kafka "$dir/server.properties"
}

secure() {
  local dir="$1" port="$2" ctrl="$3" protocol="$4" tls="$5" user="${6:-}" password="${7:-}"
  case "$protocol" in SSL|SASL_SSL) ;; *) echo "PROTOCOL must be SSL or SASL_SSL" >&2; exit 2 ;; esac
  local cluster=""
  [ -f "$dir/cluster.id" ] && cluster="$(cat "$dir/cluster.id")"
  [ -n "$cluster" ] || cluster="$(cluster_id)"
  mkdir -p "$dir/data"
  echo "$cluster" > "$dir/cluster.id"
  # Kafka's PEM key store: the private key and the certificate chain in one file.
  (umask 077; cat "$tls/broker.key" "$tls/broker.pem" > "$dir/keystore.pem")
  (umask 077; cat > "$dir/server.properties") <<EOF
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$ctrl
listeners=CLIENT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$ctrl
advertised.listeners=CLIENT://127.0.0.1:$port
inter.broker.listener.name=CLIENT
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:PLAINTEXT,CLIENT:$protocol
ssl.keystore.type=PEM
ssl.keystore.location=$dir/keystore.pem
ssl.truststore.type=PEM
ssl.truststore.location=$tls/ca.pem
log.dirs=$dir/data
offsets.topic.replication.factor=1
offsets.topic.num.partitions=1
default.replication.factor=1
min.insync.replicas=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
log.cleaner.dedupe.buffer.size=16777216
EOF
  local scram=()
  if [ "$protocol" = SASL_SSL ]; then
    [ -n "$user" ] && [ -n "$password" ] || { echo "SASL_SSL needs USER and PASSWORD" >&2; exit 2; }
    # The broker talks to itself over the same listener, as user `broker`.
    local broker_password
    broker_password="$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"
    cat >> "$dir/server.properties" <<EOF
sasl.enabled.mechanisms=SCRAM-SHA-512
sasl.mechanism.inter.broker.protocol=SCRAM-SHA-512
listener.name.client.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="broker" password="$broker_password";
EOF
    scram=(--add-scram "SCRAM-SHA-512=[name=broker,password=$broker_password]"
           --add-scram "SCRAM-SHA-512=[name=$user,password=$password]")
  fi
  log4j "$dir"
  java_cmd "$dir"
  "${JAVA[@]}" kafka.tools.StorageTool format -t "$cluster" -c "$dir/server.properties" \
    --ignore-formatted "${scram[@]}" >/dev/null
  exec "${JAVA[@]}" kafka.Kafka "$dir/server.properties"
}

case "${1:-}" in
  libs) libs ;;
  run) shift; [ $# -eq 3 ] || { echo "usage: $0 run DIR PORT CTRL_PORT" >&2; exit 2; }; run "$@" ;;
  node) shift; [ $# -eq 5 ] || { echo "usage: $0 node DIR ID PORT VOTERS CLUSTER_ID" >&2; exit 2; }; node "$@" ;;
  cluster-id) cluster_id ;;
  secure) shift; [ $# -eq 5 ] || [ $# -eq 7 ] || { echo "usage: $0 secure DIR PORT CTRL_PORT SSL|SASL_SSL TLS_DIR [USER PASSWORD]" >&2; exit 2; }; secure "$@" ;;
  *) echo "usage: $0 libs | run DIR PORT CTRL_PORT | node DIR ID PORT VOTERS CLUSTER_ID | cluster-id | secure DIR PORT CTRL_PORT PROTOCOL TLS_DIR [USER PASSWORD]" >&2; exit 2 ;;
esac
