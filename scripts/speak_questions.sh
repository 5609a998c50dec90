#!/usr/bin/env bash
# The benchmarks' eight spoken questions (2-5 s, espeak-ng en-us at 140 words per minute) as
# q1.wav ... q8.wav in DIR:   bash scripts/speak_questions.sh DIR
# (S2S_SPEAK_VOICE and S2S_SPEAK_RATE choose another espeak-ng voice and pace: the realtime benchmark's)
set -euo pipefail
DIR="$1"
mkdir -p "$DIR"
n=0
while read -r question; do
    n=$((n + 1))
    espeak-ng -v "${S2S_SPEAK_VOICE:-en-us}" -s "${S2S_SPEAK_RATE:-140}" -w "$DIR/q$n.wav" "$question"
done <<'LIST'
What is the capital of France?
How far away is the moon?
Why do cats purr when they are happy?
Can you tell me a fun fact about elephants?
What should I cook for dinner tonight?
How do airplanes stay up in the sky?
Could you explain how bees make honey from the flowers they visit?
What is the best way to start learning to play the guitar as an adult?
LIST
