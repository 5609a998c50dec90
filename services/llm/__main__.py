from services.llm.stage import LlmStage
from services.runtime.worker import main


def run() -> None:
    main(LlmStage)


if __name__ == "__main__":
    run()
