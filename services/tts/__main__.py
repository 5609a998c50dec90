from services.runtime.worker import main
from services.tts.stage import TtsStage


def run() -> None:
    main(TtsStage)


if __name__ == "__main__":
    run()
