from services.asr.stage import AsrStage
from services.runtime.worker import main


def run() -> None:
    main(AsrStage)


if __name__ == "__main__":
    run()
